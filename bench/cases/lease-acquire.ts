// Case 2, lease acquire: from connect() to the slice mapped to the first
// doorbell's completion, against a raw stream-socket round trip (connect, one
// request/reply with an echo server in the broker's process, close).
// The client is a separate process; each lease is released (and seen free)
// before the next acquire, so every acquire starts from the same state.
//
//   node dist/bench/cases/lease-acquire.js [--quick]

import { join } from 'node:path';
import type { Lease as BrokerLease } from '../../src/broker/lease.js';
import { StreamServer, type StreamSocket } from '../../src/sys/index.js';
import { VFIO_USER_FRAMING } from '../../src/vfio/user/transport.js';
import { ClientProc } from '../fixtures/client-proc.js';
import { sharedMs } from '../fixtures/clock.js';
import { BrokerProbe } from '../fixtures/probe.js';
import { RequestProbe } from '../fixtures/request-probe.js';
import { metric, progress, runCase } from '../fixtures/result.js';
import { startRig } from '../fixtures/rig.js';

interface Acquire {
  lease: string;
  at0: number;
  atMapped: number;
  atQueue: number;
  atDone: number;
  totalUs: number;
}

const epochMs = sharedMs;

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
  const released = new Map<string, number>();
  rig.broker.leases.on('granted', (l: BrokerLease) => granted.set(l.id, epochMs()));
  rig.broker.leases.on('released', (l: BrokerLease) => released.set(l.id, epochMs()));
  const probe = new BrokerProbe(rig.broker);
  const requests = new RequestProbe(rig.broker);
  const client = await ClientProc.spawn();
  try {
    progress(`raw stream connect + round trip, ${n * 4}×`);
    const rtt = await client.call<number[]>('streamRtt', {
      socket: echo.path,
      n: n * 4,
      warmup: 50,
      budgetMs: quick ? 3000 : 30_000,
    });
    progress(`lease acquire, ${n}×`);
    const total: number[] = [];
    const toGrant: number[] = [];
    const toVersion: number[] = [];
    const mappedToQueue: number[] = [];
    const queueToNop: number[] = [];
    const release: number[] = [];
    const deviceMs: number[] = [];
    const commands = new Set<number>();
    const rounds = new Set<number>();
    requests.take();
    for (let i = 0; i < n + 5; i++) {
      probe.take();
      const a = await client.call<Acquire>('acquire', { socket: rig.socket });
      const p = probe.take();
      const { at } = await client.call<{ at: number }>('releaseAll');
      while (!released.has(a.lease)) await new Promise((r) => setTimeout(r, 1));
      if (i < 5) continue; // warm-up
      const g = granted.get(a.lease)!;
      total.push(a.totalUs);
      deviceMs.push(p.busyMs * 1000);
      commands.add(p.commands);
      rounds.add(p.rounds);
      toGrant.push((g - a.at0) * 1000);
      toVersion.push((a.atMapped - a.at0) * 1000);
      mappedToQueue.push((a.atQueue - a.atMapped) * 1000);
      queueToNop.push((a.atDone - a.atQueue) * 1000);
      release.push(released.get(a.lease)! - at);
    }
    // The broker's work per acquire, request by request (warm-up excluded: the last n of each).
    const calls = requests.take();
    const got = (k: string) => (calls.get(k) ?? []).slice(-n);
    const own = got('grant').map((t, i) => t - (got('device: activate')[i] ?? 0));
    return {
      metrics: [
        metric('stream-rtt', 'raw stream socket: connect + 1 framed round trip', 'µs', rtt, {
          role: 'baseline',
        }),
        metric('acquire', 'lease acquire: connect → mapped → first NOP done', 'µs', total, {
          ref: 'stream-rtt',
        }),
        metric(
          'acquire-version',
          '· connect → VERSION answered (policy, resources decided)',
          'µs',
          toVersion,
        ),
        metric('acquire-grant', '· connect → broker granted (grant device commands done)', 'µs', toGrant),
        metric(
          'acquire-batch',
          '· VERSION → queue ready: one batch (regions, irqs, kick fd, the rings DMA_MAP)',
          'µs',
          mappedToQueue,
        ),
        metric('acquire-nop', '· first doorbell → completion', 'µs', queueToNop),
        metric('acquire-device', '· of which the broker waits on device commands', 'µs', deviceMs),
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
          '· SET_IRQS in the broker (3 per acquire; MSI-X goes to the device)',
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
        metric('release', 'lease release: close() → lease free in broker', 'ms', release),
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
        clock: 'step times cross processes: CLOCK_MONOTONIC (fixtures/clock.ts) on both sides',
      },
    };
  } finally {
    requests.close();
    await client.exit();
    echo.close();
    await rig.close();
  }
});
