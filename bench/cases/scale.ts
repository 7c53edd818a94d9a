// Case 7, scale: 1,000 concurrent leases held by 50 client processes, 20
// each (--quick: 100 by 10), on a simulator with 1,024 queues. Measured:
// the time to acquire them all (every process leasing its 20 one after
// another, all processes at once), the broker's RSS and fd count, and the
// lease-acquire time (connect → first NOP) while they are held, against the
// same with none held. Then the same burst again, warm: the leases released,
// WARM_BURSTS more bursts unmeasured (1 in --quick), each released, and one
// measured (`acquire-all-warm`). That splits what a fresh broker, simulator
// and clients cost (their code not yet compiled, their heaps still growing)
// from what every burst costs. The fresh burst also resets each queue at its
// first grant (the warm one's were reset when reclaimed), one device round
// trip a lease: skipping it changed the fresh burst by less than its
// run-to-run spread (issue 16, twenty-first pass). The release-all row is the
// exit of the processes holding the warm burst. Between the fresh burst and the probes the simulator's CPU is read
// with every lease held and idle (`sim-idle-held`). Last, the same burst from as many C processes (libdevlease,
// clients/c/tests/clib-scale.c; `acquire-all-c`), after one unmeasured: the broker and simulator as warm as for
// the warm burst, with clients whose own CPU per lease is small, which shows how much of a burst is the clients'.
//
//   node dist/bench/cases/scale.js [--quick]

import { readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildClibProgram } from '../fixtures/clib.js';
import { ClibScaleProc } from '../fixtures/clib-scale.js';
import { ClientProc, exitAll } from '../fixtures/client-proc.js';
import { runMs } from '../fixtures/cpu.js';
import { asBurstClient, burst, burstRows, releaseAllLeases } from '../fixtures/lease-burst.js';
import { ReleaseWatch } from '../fixtures/released.js';
import { metric, progress, runCase } from '../fixtures/result.js';
import { rssMiB, startRig } from '../fixtures/rig.js';

const fdCount = (): number => readdirSync('/proc/self/fd').length;
/** The soft RLIMIT_NOFILE of this (the broker's) process. */
const fdLimit = (): number =>
  Number(/Max open files\s+(\d+)/.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1]);

/**
 * Unmeasured bursts before the warm one. In scratch runs (issue 16, twenty-first pass) the burst took
 * 1.61–1.67 s after 5 and 1.40–1.54 s after 10, the broker's CPU per lease 0.52–0.58 and 0.51–0.55 ms:
 * the broker's had settled by 5, the clients' still fell.
 */
const WARM_BURSTS = 5;
/** A pause after a release before the next burst: the reclaims' last device replies come in meanwhile. */
const SETTLE_MS = 20;
/** How long the simulator's CPU is read with every lease held and idle. */
const IDLE_WINDOW_MS = 2000;

/**
 * The CPU all threads of `pid` use over `ms` of wall time, % of a core, from schedstat (ns): a device asleep until
 * kicked runs some 100 short rounds a second, well under /proc's 10 ms ticks.
 */
async function idleCpuPercent(pid: number, ms: number): Promise<number> {
  const r0 = runMs(pid);
  const t0 = performance.now();
  await sleep(ms);
  return ((runMs(pid) - r0) / (performance.now() - t0)) * 100;
}

async function acquireLoop(
  c: ClientProc,
  socket: string,
  n: number,
  released: ReleaseWatch,
): Promise<number[]> {
  const out: number[] = [];
  const warmup = 10; // the first acquires of a fresh broker run cold code
  for (let i = 0; i < n + warmup; i++) {
    const a = await c.call<{ lease: string; totalUs: number }>('acquire', { socket });
    await c.call('releaseAll');
    await released.seen(a.lease);
    if (i >= warmup) out.push(a.totalUs / 1000);
  }
  return out;
}

runCase('scale', 'Scale: concurrent leases from many processes', async (quick) => {
  const procs = quick ? 10 : 50;
  const each = quick ? 10 : 20;
  const total = procs * each;
  const probes = quick ? 30 : 200;
  // Built before anything starts: a machine without a C compiler or json-c fails here, saying so.
  const clibScale = buildClibProgram('clib-scale');
  const rig = await startRig({
    simArgs: ['--queues', '1024'],
    config: {
      policy: { rule: [{ any: true, max_leases: 4096, max_mappings: 1 << 16 }] },
      // All 50 processes are one uid and may all be in VERSION at once (the default per-uid cap is 32); a
      // loaded machine must not turn a slow grant into a refusal either (nor a client's 5 s call timeout:
      // 50 VERSIONs queue behind each other's grants, so acquireMany's calls get 60 s).
      sockets: { max_pending_per_uid: 256, version_timeout_ms: 60_000 },
    },
  });
  const released = new ReleaseWatch(rig.broker.leases, () => performance.now());
  const clients: ClientProc[] = [];
  const cHolders: ClibScaleProc[] = [];
  try {
    const probe = await ClientProc.spawn();
    clients.push(probe);
    progress(`lease acquire with none held, ${probes}×`);
    const idle = await acquireLoop(probe, rig.socket, probes, released);
    const rssIdle = rssMiB(process.pid);
    const fdsIdle = fdCount();

    progress(`starting ${procs} client processes`);
    for (let i = 0; i < procs; i += 10) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(10, procs - i) }, () => ClientProc.spawn()),
      );
      clients.push(...batch);
    }
    // The window holds the acquires only: every client process is started (and its code loaded) before it.
    progress(`${procs} processes × ${each} leases`);
    const holders = clients.slice(1).map(asBurstClient);
    const simPid = rig.sim.pid;
    // Every lease of a burst must be live in the broker when it ends (none refused, none reclaimed under it).
    const expectAllLive = (burstName: string): void => {
      const live = rig.broker.leases.all().filter((l) => l.live).length;
      if (live !== total)
        throw new Error(
          `after the ${burstName} burst: expected ${total} live leases, the broker has ${live}`,
        );
    };
    const fresh = await burst(holders, rig.socket, each, simPid);
    expectAllLive('fresh');
    const rssHeld = rssMiB(process.pid);
    const fdsHeld = fdCount();
    const simRss = rssMiB(rig.sim.pid);
    progress(`the simulator with ${total} leases held idle`);
    const simIdle = await idleCpuPercent(rig.sim.pid, quick ? 500 : IDLE_WINDOW_MS);

    progress(`lease acquire with ${total} held, ${probes}×`);
    const loaded = await acquireLoop(probe, rig.socket, probes, released);
    const warmBursts = quick ? 1 : WARM_BURSTS;
    progress(`the same burst again, warm: after ${warmBursts} more, each released`);
    const letGo = () => Promise.all(holders.map((c) => c.releaseAll()));
    await releaseAllLeases(rig.broker, released, letGo);
    for (let i = 0; i < warmBursts; i++) {
      await burst(holders, rig.socket, each, simPid);
      await releaseAllLeases(rig.broker, released, letGo);
    }
    await sleep(SETTLE_MS);
    const warm = await burst(holders, rig.socket, each, simPid);
    expectAllLive('warm');
    progress('releasing');
    const tr = performance.now();
    await releaseAllLeases(rig.broker, released, () => exitAll(clients.slice(1)));
    const releaseAllMs = performance.now() - tr;

    // The same burst from C clients (libdevlease): the broker and the simulator as warm as for the warm burst
    // above, the clients' own CPU per lease a fraction of the TypeScript client's. One burst unmeasured first
    // (the C processes' first leases fault their pages in).
    progress(`${procs} C processes (libdevlease) × ${each} leases`);
    for (let i = 0; i < procs; i += 10) {
      // allSettled: the processes that did start are held (and stopped in `finally`) when one of them did not.
      const batch = await Promise.allSettled(
        Array.from({ length: Math.min(10, procs - i) }, () =>
          ClibScaleProc.spawn(clibScale, rig.socket, each),
        ),
      );
      for (const s of batch) if (s.status === 'fulfilled') cHolders.push(s.value);
      const failed = batch.find((s): s is PromiseRejectedResult => s.status === 'rejected');
      if (failed) throw failed.reason;
    }
    const cLetGo = () => Promise.all(cHolders.map((c) => c.releaseAll()));
    await burst(cHolders, rig.socket, each, simPid);
    expectAllLive('first C');
    await releaseAllLeases(rig.broker, released, cLetGo);
    await sleep(SETTLE_MS);
    const cBurst = await burst(cHolders, rig.socket, each, simPid);
    expectAllLive('C');
    await releaseAllLeases(rig.broker, released, () => Promise.all(cHolders.map((c) => c.exit())));
    const idleM = metric('acquire-idle', 'lease acquire, none held', 'ms', idle, { role: 'baseline' });
    const heldM = metric('acquire-held', `lease acquire, ${total} held`, 'ms', loaded, {
      ref: 'acquire-idle',
    });
    heldM.note = `p99 ${(heldM.p99 / idleM.p99).toFixed(2)}× idle p99`;
    const perLease = (fdsHeld - fdsIdle) / total;
    return {
      metrics: [
        idleM,
        heldM,
        metric(
          'acquire-each',
          `one lease of the ${total} (connect → mapped), all at once`,
          'ms',
          fresh.samples.flat().map((us) => us / 1000),
          {
            ref: 'acquire-idle',
          },
        ),
        metric(
          'acquire-each-warm',
          `one lease of the ${total} again, warm`,
          'ms',
          warm.samples.flat().map((us) => us / 1000),
          { ref: 'acquire-idle' },
        ),
        ...burstRows('acquire-all', `acquire all ${total} (${procs} processes in parallel)`, fresh),
        ...burstRows(
          'acquire-all-warm',
          `acquire all ${total} again, warm (after ${warmBursts} unmeasured bursts, each released)`,
          warm,
        ),
        ...burstRows(
          'acquire-all-c',
          `acquire all ${total} from ${procs} C processes (libdevlease; after one unmeasured burst)`,
          cBurst,
        ),
        metric('release-all', `all ${procs} processes exit → all ${total} free (the warm burst's)`, 's', [
          releaseAllMs / 1000,
        ]),
        metric(
          'sim-idle-held',
          `simulator CPU with the ${total} leases held idle, % of a core (all its threads, schedstat)`,
          '%',
          [simIdle],
          {
            note: 'their queues enabled by the grant, nothing rung: the device sleeps until kicked (1,024 queues on 253 shared kick fds), polling every 10 ms',
          },
        ),
        metric('rss-idle', 'broker RSS, no leases', 'MiB', [rssIdle], { role: 'baseline' }),
        metric('rss-held', `broker RSS, ${total} leases`, 'MiB', [rssHeld], { ref: 'rss-idle' }),
        metric('rss-per-lease', '· broker memory per lease ((held − none) / leases)', 'KiB', [
          ((rssHeld - rssIdle) * 1024) / total,
        ]),
        metric('fds-per-lease', '· broker fds per lease', 'fds', [perLease]),
      ],
      notes: {
        simulator: '--queues 1024, default --idle-poll-us 50',
        leases: total,
        processes: procs,
        brokerKiBPerLease: Math.round(((rssHeld - rssIdle) * 1024) / total),
        brokerFds: { idle: fdsIdle, held: fdsHeld, perLease, limit: fdLimit() },
        leasesBeforeFdLimit: Math.floor((fdLimit() - fdsIdle) / perLease),
        simulatorRssMiB: Math.round(simRss),
        cpuPerLeaseUs:
          "over each burst's window / leases: this (the broker's) process's utime+stime; the simulator, the clients and the broker's helper threads from schedstat (ns, every thread)",
        warmBursts,
        brokerHelpersCpuPerLeaseUs: { fresh: fresh.cpu.brokerHelpers, warm: warm.cpu.brokerHelpers },
      },
    };
  } finally {
    await Promise.all([...clients.map((c) => c.kill()), ...cHolders.map((c) => c.exit())]);
    await rig.close();
  }
});
