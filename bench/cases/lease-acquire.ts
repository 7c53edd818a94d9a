// Case 2, lease acquire: from connect() to the slice mapped to the first
// doorbell's completion, against a raw stream-socket round trip (connect, one
// request/reply with an echo server in the broker's process, close).
// The client is a separate process; each lease is released (and seen free)
// before the next acquire, so every acquire starts from the same state.
// Floor: the acquire's message pattern with zero work per step, client →
// broker → device in three processes (fixtures/acquire-floor.ts), in chunks
// alternating with the acquires. Both are measured in steady state, after
// 2000 unmeasured cycles each (a broker's code is still being optimized over
// its first thousands of acquires). Last, the acquire with the broker's process
// confined to one CPU, alternating with unconfined ones (fixtures/placement.ts).
// Beside each process's CPU per cycle, from acquires of their own: how long
// its threads waited runnable for a CPU during an acquire (the floor's, per
// sample), and how long the broker's process's helper threads ran during the
// slowest tenth of those acquires and during the rest
// (/proc/<pid>/task/<tid>/schedstat, fixtures/cpu.ts).
//
//   node dist/bench/cases/lease-acquire.js [--quick]

import { join } from 'node:path';
import type { Lease as BrokerLease } from '../../src/broker/lease.js';
import { StreamServer, type StreamSocket } from '../../src/sys/index.js';
import { VFIO_USER_FRAMING } from '../../src/vfio/user/transport.js';
import { AcquireFloor, type FloorSample } from '../fixtures/acquire-floor.js';
import { ClientProc } from '../fixtures/client-proc.js';
import { sharedMs } from '../fixtures/clock.js';
import { cpuMs, ownCpuMs, threadTimes, threadTimesSince } from '../fixtures/cpu.js';
import { alternateConfined } from '../fixtures/placement.js';
import { BrokerProbe } from '../fixtures/probe.js';
import { type ByProcess, type ProcessRowsSpec, processRows } from '../fixtures/process-rows.js';
import { ReleaseWatch } from '../fixtures/released.js';
import { RequestProbe } from '../fixtures/request-probe.js';
import { type Metric, metric, progress, runCase } from '../fixtures/result.js';
import { startRig } from '../fixtures/rig.js';
import { summarize } from '../stats.js';

interface Acquire {
  lease: string;
  at0: number;
  atMapped: number;
  atQueue: number;
  atDone: number;
  totalUs: number;
}

const epochMs = sharedMs;
/** The acquires and their same-topology floor alternate in this many chunks (load drifts over a run). */
const CHUNKS = 5;

runCase('lease-acquire', 'Lease acquire: connect to slice mapped to first doorbell', async (quick) => {
  const n = quick ? 40 : 300;
  const rig = await startRig({ simArgs: ['--queues', '8'] });
  const echo = StreamServer.listen(join(rig.dir, 'echo.sock'), { socket: { framing: VFIO_USER_FRAMING } });
  echo.on('connection', (s: StreamSocket) => {
    s.on('message', (m) => {
      for (const fd of m.fds) fd.close();
      s.send(m.data);
    });
  });
  const granted = new Map<string, number>();
  rig.broker.leases.on('granted', (l: BrokerLease) => granted.set(l.id, epochMs()));
  const released = new ReleaseWatch(rig.broker.leases, epochMs);
  const probe = new BrokerProbe(rig.broker);
  const requests = new RequestProbe(rig.broker);
  const client = await ClientProc.spawn();
  const floor = await AcquireFloor.start(rig.dir);
  try {
    progress(`raw stream connect + round trip, ${n * 4}×`);
    const rtt = await client.call<number[]>('streamRtt', {
      socket: echo.path,
      n: n * 4,
      warmup: 50,
      budgetMs: quick ? 3000 : 30_000,
    });
    progress(`lease acquire, ${n}×, alternating with the same-topology floor (${n}×)`);
    const total: number[] = [];
    const toGrant: number[] = [];
    const toVersion: number[] = [];
    const mappedToQueue: number[] = [];
    const queueToNop: number[] = [];
    const release: number[] = [];
    const deviceMs: number[] = [];
    const commands = new Set<number>();
    const rounds = new Set<number>();
    const floorSamples: FloorSample[] = [];
    const chunk = Math.ceil(n / CHUNKS);
    // Steady state first: a broker serves leases for days, and its code (the simulator's and the client's too)
    // is still being optimized over the first thousands of acquires: over cycles 500-750 V8's compiler threads
    // still took ~0.84 ms of the broker's CPU per cycle, ~0.1-0.26 ms after 2000 (issue 16, eleventh pass;
    // the broker's CPU per cycle over the first 300 was ~1.3× that over 3000). The acquires and the floor
    // alike, alternating; nothing here is measured.
    // The client lets the lease go and the broker frees it; resolves with when the client let go (epoch ms).
    const letGo = async (a: Acquire): Promise<number> => {
      const { at } = await client.call<{ at: number }>('releaseAll');
      await released.seen(a.lease);
      return at;
    };
    // One acquire + release cycle, unmeasured beyond the acquire's own times (the warm-up and the placement A/B).
    const cycle = async (): Promise<Acquire> => {
      const a = await client.call<Acquire>('acquire', { socket: rig.socket });
      await letGo(a);
      return a;
    };
    const steady = quick ? 20 : 2000;
    progress(`steady state: ${steady} acquire + release cycles and ${steady} floor cycles, not measured`);
    for (let b = 0; b < CHUNKS; b++) {
      await floor.run(Math.ceil(steady / CHUNKS), 2, (quick ? 3000 : 30_000) / CHUNKS);
      for (let i = 0; i < Math.ceil(steady / CHUNKS); i++) await cycle();
    }
    // The floor's CPU rows count from here, as the acquires' do (its run-queue rows count in their own phase).
    Object.assign(floor.cpu, { client: 0, broker: 0, device: 0, samples: 0 });
    requests.take();
    // CPU per acquire + release cycle, process by process (load-robust beside the wall-clock rows): the
    // bench client, this process (the broker, its probes and the case's own loop), the simulator.
    const cpu = { client: 0, broker: 0, device: 0, cycles: 0 };
    const simPid = rig.sim.proc.pid!;
    for (let i = 0; i < n; i++) {
      if (i % chunk === 0) {
        floorSamples.push(...(await floor.run(chunk, 2, (quick ? 3000 : 30_000) / CHUNKS)));
      }
      const c0 = { client: cpuMs(client.pid), broker: ownCpuMs(), device: cpuMs(simPid) };
      probe.take();
      const a = await client.call<Acquire>('acquire', { socket: rig.socket });
      const p = probe.take();
      const at = await letGo(a);
      cpu.client += cpuMs(client.pid) - c0.client;
      cpu.broker += ownCpuMs() - c0.broker;
      cpu.device += cpuMs(simPid) - c0.device;
      cpu.cycles++;
      const g = granted.get(a.lease)!;
      total.push(a.totalUs);
      deviceMs.push(p.busyMs * 1000);
      commands.add(p.commands);
      rounds.add(p.rounds);
      toGrant.push((g - a.at0) * 1000);
      toVersion.push((a.atMapped - a.at0) * 1000);
      mappedToQueue.push((a.atQueue - a.atMapped) * 1000);
      queueToNop.push((a.atDone - a.atQueue) * 1000);
      release.push(released.at.get(a.lease)! - at);
    }
    // The broker's work per acquire, request by request: every request of the measured acquires (the take()
    // before them dropped the warm-up's), 4 SET_IRQS an acquire.
    const topology = floorSamples.map((f) => f.total);
    const floorCpu = { ...floor.cpu };
    const calls = requests.take();
    const got = (k: string) => calls.get(k) ?? [];
    // The broker's own CPU inside its device waits, in cycles of their own after the measured ones: sampling it
    // (process.cpuUsage() at each wait's start and end, a few µs each on a many-threaded process) would add to
    // the measured cycles' device programming what it measures.
    const sampledWaits = quick ? 20 : 300;
    progress(`${sampledWaits} more acquires, this process's CPU sampled inside the broker's device waits`);
    const deviceWaitMs: number[] = [];
    const deviceWaitCpuMs: number[] = [];
    probe.sampleCpu = true;
    try {
      for (let i = 0; i < sampledWaits; i++) {
        probe.take();
        const a = await client.call<Acquire>('acquire', { socket: rig.socket });
        const p = probe.take();
        await letGo(a);
        deviceWaitMs.push(p.busyMs * 1000);
        deviceWaitCpuMs.push(p.busyCpuMs * 1000);
      }
    } finally {
      probe.sampleCpu = false;
    }
    // The scheduler's view, in acquires of their own too (reading every thread's schedstat of three processes
    // costs this process ~65 µs a read, which the CPU rows above would count): how long each process's threads
    // waited runnable for a CPU during an acquire, and how long the broker's process's helper threads (V8's
    // compiler and collector, libuv's pool) ran meanwhile, which the nineteenth pass found in the slowest ones.
    // The floor's waits alternate with them in chunks, as the floor and the acquires do above.
    const scheduled = quick ? 20 : n;
    progress(
      `${scheduled} more acquires, every thread's scheduler times read around each, alternating with the floor's`,
    );
    const wait: ByProcess = { client: 0, broker: 0, device: 0 };
    const helpers: { acquireUs: number; helpersUs: number }[] = [];
    const schedChunk = Math.ceil(scheduled / CHUNKS);
    floor.measureWaits = true;
    for (let i = 0; i < scheduled; i++) {
      if (i % schedChunk === 0) await floor.run(schedChunk, 2, (quick ? 3000 : 30_000) / CHUNKS);
      const before = {
        client: threadTimes(client.pid),
        broker: threadTimes(process.pid),
        device: threadTimes(simPid),
      };
      const a = await client.call<Acquire>('acquire', { socket: rig.socket });
      const broker = threadTimesSince(process.pid, before.broker);
      wait.client += threadTimesSince(client.pid, before.client).waitMs;
      wait.broker += broker.waitMs;
      wait.device += threadTimesSince(simPid, before.device).waitMs;
      helpers.push({ acquireUs: a.totalUs, helpersUs: broker.helpersRunMs * 1000 });
      await letGo(a);
    }
    floor.measureWaits = false;
    // Placement (OPERATIONS.md, "Placement: the broker on one CPU"): the same acquires with every thread
    // of this process, the broker's, confined to one CPU, as systemd's CPUAffinity= does; the client and
    // the simulator stay where the scheduler puts them. Unlike the acquire row, no floor chunks run between.
    const perArm = quick ? 20 : 300;
    progress(
      `${perArm} acquires with the broker's process on one CPU, alternating with ${perArm} unconfined`,
    );
    const placement = await alternateConfined(perArm, CHUNKS, async () => (await cycle()).totalUs);
    requests.take();
    const own = got('grant').map((t, i) => t - (got('device: activate')[i] ?? 0));
    return {
      metrics: [
        metric('stream-rtt', 'raw stream socket: connect + 1 framed round trip', 'µs', rtt, {
          role: 'baseline',
        }),
        metric(
          'acquire-topology',
          "acquire's messages, zero work: client → broker → device, 3 processes, fds passed",
          'µs',
          topology,
          {
            role: 'floor',
            note: `goal 1 ms = ${(1000 / summarize(topology).median).toFixed(2)}× this floor`,
          },
        ),
        metric('acquire', 'lease acquire: connect → mapped → first NOP done', 'µs', total, {
          ref: 'stream-rtt',
          note: `${(summarize(total).median / summarize(topology).median).toFixed(1)}× acquire-topology`,
        }),
        metric(
          'topology-version',
          '· zero work: connect → VERSION answered',
          'µs',
          floorSamples.map((f) => f.version),
          { role: 'floor' },
        ),
        metric(
          'topology-batch',
          '· zero work: VERSION → batch answered (fds, 2 relays)',
          'µs',
          floorSamples.map((f) => f.batch),
          {
            role: 'floor',
          },
        ),
        metric(
          'topology-doorbell',
          '· zero work: doorbell kick → device answers',
          'µs',
          floorSamples.map((f) => f.doorbell),
          {
            role: 'floor',
          },
        ),
        metric(
          'acquire-version',
          '· connect → VERSION answered (policy, resources decided)',
          'µs',
          toVersion,
          { ref: 'topology-version' },
        ),
        metric('acquire-grant', '· connect → broker granted (grant device commands done)', 'µs', toGrant),
        metric(
          'acquire-batch',
          '· VERSION → queue ready: one batch (regions, irqs, kick fd, the rings DMA_MAP)',
          'µs',
          mappedToQueue,
          { ref: 'topology-batch' },
        ),
        metric('acquire-nop', '· first doorbell → completion', 'µs', queueToNop, {
          ref: 'topology-doorbell',
        }),
        metric('acquire-device', '· of which the broker waits on device commands', 'µs', deviceMs),
        metric(
          'acquire-device-sampled',
          `·· the same in ${sampledWaits} more acquires, with this process's CPU sampled inside those waits`,
          'µs',
          deviceWaitMs,
        ),
        metric(
          'acquire-device-cpu',
          "··· this process's CPU inside them (the broker's own work while it waits, probes included)",
          'µs',
          deviceWaitCpuMs,
        ),
        metric(
          'grant',
          '· the grant in the broker (policy, resources, device programming)',
          'µs',
          got('grant'),
        ),
        metric('grant-policy', '·· policy checkLease()', 'µs', got('policy: checkLease()')),
        metric(
          'grant-device',
          '·· device programming + slice fds (pipelined)',
          'µs',
          got('device: activate'),
        ),
        metric('grant-own', '·· the rest of the grant (bookkeeping, slice units, audit)', 'µs', own),
        metric(
          'setirqs',
          '· SET_IRQS in the broker (4 per acquire; MSI-X goes to the device)',
          'µs',
          got('session: setIrqs'),
        ),
        metric(
          'region-info',
          '· REGION_INFO in the broker (slice fd handed out, watched)',
          'µs',
          got('session: regionInfo'),
        ),
        metric(
          'io-fds',
          '· GET_REGION_IO_FDS in the broker (the kick fd)',
          'µs',
          got('session: regionIoFds'),
        ),
        metric('map-in-broker', '· DMA_MAP in the broker (1 per acquire)', 'µs', got('session: dmaMap')),
        metric(
          'acquire-free',
          '· placement: acquires alternating in chunks with the row below (no floor between), unconfined',
          'µs',
          placement.free,
          { role: 'baseline' },
        ),
        metric(
          'acquire-one-cpu',
          "· the same, every thread of the broker's process on one CPU (taskset -a; OPERATIONS.md)",
          'µs',
          placement.one,
          { ref: 'acquire-free' },
        ),
        metric('release', 'lease release: close() → lease free in broker', 'ms', release),
        ...processRows(CPU_ROWS, cpu, cpu.cycles, floorCpu, floorCpu.samples),
        ...processRows(WAIT_ROWS, wait, scheduled, floor.wait, floor.wait.samples),
        ...helperRows(helpers),
      ],
      notes: {
        simulator: '--queues 8, default --idle-poll-us 50',
        deviceCommandsPerAcquire: [...commands],
        sequentialDeviceRoundTripsPerAcquire: [...rounds],
        // Issue 16 fifth pass: VERSION is answered while the grant's device commands run, and the client sends
        // its setup and the queue's requests as one batch (connect deferSetup), whose device calls (MSI-X
        // SET_IRQS, DMA_MAP) the broker pipelines: 2 client ↔ broker round trips, 1 device round trip after
        // VERSION (2 in the rounds above when the DMA_MAP reaches the broker after the SET_IRQS reply).
        sequentialClientRoundTripsPerAcquire: 2,
        topologyFloor:
          'per sample: connect; VERSION (broker sends the grant 2 device commands, answers at once); a batch of 7 (MSI-X SET_IRQS: eventfd, relayed; 3 notice SET_IRQS: eventfd each; REGION_INFO: page fd back; GET_REGION_IO_FDS: kick fd back; DMA_MAP: memfd, relayed with the MSI-X one as one pipelined device round trip, after the grant replies); doorbell: store + eventfd kick to the device asleep in ppoll, one store back',
        clock: 'step times cross processes: CLOCK_MONOTONIC (fixtures/clock.ts) on both sides',
        placement: placement.confined
          ? `acquire-one-cpu: this process (the broker, with the case's loop, probes and echo server) pinned to CPU ${placement.cpu} of ${placement.allowed} (taskset -a); the client and the simulator unconfined`
          : `one CPU allowed (${placement.allowed}): acquire-free and acquire-one-cpu ran alike`,
      },
    };
  } finally {
    await floor.close();
    requests.close();
    await client.exit();
    echo.close();
    await rig.close();
  }
});

/** CPU per acquire + release cycle by process (/proc/<pid>/stat), each against the floor's process per sample. */
const CPU_ROWS: ProcessRowsSpec = {
  id: 'cpu',
  floorLabel: 'CPU per cycle, zero-work topology',
  label: 'CPU per acquire + release',
  who: {
    client: 'bench client process / floor client',
    broker: 'this process: broker + probes / floor broker',
    device: 'simulator / floor device',
  },
};

/**
 * Run-queue wait by process: how long its threads, summed, were runnable but not running. A thread that waits
 * need not hold up the acquire (a V8 helper behind the main thread), and the sum may pass the acquire's time.
 * Every process's window is the call to the client process that makes the acquire (its IPC included, the
 * release not); the floor's, a chunk of its samples (its client in this process), alternating with them.
 */
const WAIT_ROWS: ProcessRowsSpec = {
  id: 'wait',
  floorLabel: 'run-queue wait per sample, zero-work topology, all threads',
  label: 'run-queue wait in an acquire + its IPC call, all threads',
  who: {
    client: 'bench client / floor client, in this process',
    broker: 'this process / floor broker',
    device: 'simulator / floor device',
  },
};

/**
 * How long the broker's process's helper threads ran during the slowest tenth of the acquires, against the rest
 * (means): on two CPUs, V8's compiling and collecting in the broker is what the slowest acquires ran beside
 * (issue 16, nineteenth pass §1).
 */
function helperRows(samples: { acquireUs: number; helpersUs: number }[]): Metric[] {
  const byTime = [...samples].sort((a, b) => a.acquireUs - b.acquireUs);
  const cut = Math.floor(byTime.length * 0.9);
  const rest = byTime.slice(0, cut);
  const slowest = byTime.slice(cut);
  const mean = (xs: typeof samples, key: 'acquireUs' | 'helpersUs') =>
    xs.reduce((sum, x) => sum + x[key], 0) / Math.max(1, xs.length);
  // A longer acquire is a longer window: its helpers' CPU is given with the acquires' mean time.
  const window = (xs: typeof samples) => Math.round(mean(xs, 'acquireUs'));
  return [
    metric(
      'helpers-rest',
      "broker's helper threads (V8's compiler, GC; libuv) on a CPU in an acquire, fastest 90 % (mean)",
      'µs',
      [mean(rest, 'helpersUs')],
      { role: 'baseline', note: `${rest.length} acquires, ${window(rest)} µs each on average` },
    ),
    metric(
      'helpers-slowest',
      '· the same during the slowest 10 % (mean)',
      'µs',
      [mean(slowest, 'helpersUs')],
      {
        ref: 'helpers-rest',
        note: `${slowest.length} acquires, from ${Math.round(slowest[0]?.acquireUs ?? 0)} µs, ${window(slowest)} µs on average`,
      },
    ),
  ];
}
