// Case 1, the hot path: one SA-1 NOP, doorbell to completion seen, with the
// device spinning (--idle-poll-us 0) and the client spinning.
//   floor     two processes ping-ponging through a shared memfd (Atomics store/load, both spinning)
//   direct    the client stores SQ_TAIL into its own mapped queue page (bare ring, and through Sa1Queue)
//   mediated  the client asks a mediating broker process over the lease wire (SOCK_STREAM) to ring, then spins
//
//   node dist/bench/cases/hot-path.js [--quick]

import { join } from 'node:path';
import { ClientProc, spawnReady } from '../fixtures/client-proc.js';
import { floor } from '../fixtures/pingpong-floor.js';
import { type Metric, metric, progress, runCase } from '../fixtures/result.js';
import { startRig, tempDir } from '../fixtures/rig.js';

runCase(
  'hot-path',
  'Hot path: SA-1 NOP, doorbell to completion (device and client spinning)',
  async (quick) => {
    const n = quick ? 3000 : 20_000;
    const warmup = quick ? 500 : 2000;
    const budgetMs = quick ? 3000 : 30_000; // per loop: only a crawling (shared, busy) machine reaches it
    progress(`floor: shared-memory ping-pong, ${n * 5} round trips`);
    const floorSamples = await floor(n * 5, budgetMs);

    const rig = await startRig({ simArgs: ['--queues', '4', '--idle-poll-us', '0'] });
    const tmp = tempDir('mediator');
    const client = await ClientProc.spawn();
    let mediator: Awaited<ReturnType<typeof spawnReady>> | null = null;
    try {
      await client.call('lease', { socket: rig.socket });
      progress(`direct: bare ring, ${n} NOPs`);
      const raw = await client.call<number[]>('nopRaw', { n, warmup, budgetMs });
      progress(`direct: Sa1Queue, ${n} NOPs`);
      await client.call('releaseAll');
      await client.call('lease', { socket: rig.socket });
      const queue = await client.call<number[]>('nopQueue', { n, warmup, budgetMs });
      progress(`mediated: doorbell through a broker process, ${n} NOPs`);
      await client.call('releaseAll');
      await client.call('lease', { socket: rig.socket });
      const socket = join(tmp.dir, 'mediator.sock');
      mediator = await spawnReady('mediator.js', [socket]);
      const mediated = await client.call<number[]>('nopMediated', { n, warmup, budgetMs, mediator: socket });
      // The design the seeds reject is a reference too: each direct figure says how much faster it is.
      const med = metric('nop-mediated', 'NOP mediated (rejected design): broker rings', 'µs', mediated, {
        role: 'baseline',
        ref: 'floor',
      });
      const direct = (m: Metric): Metric => {
        m.note = `${(med.median / m.median).toFixed(1)}× faster than mediated`;
        return m;
      };
      return {
        metrics: [
          metric('floor', 'shared-memory ping-pong (2 processes, Atomics)', 'µs', floorSamples, {
            role: 'floor',
          }),
          direct(metric('nop-raw', 'NOP direct: bare ring, client rings', 'µs', raw, { ref: 'floor' })),
          direct(
            metric('nop-queue', 'NOP direct: Sa1Queue submit + spinUntil', 'µs', queue, { ref: 'floor' }),
          ),
          med,
        ],
        notes: {
          simulator: '--idle-poll-us 0 (the device worker spins)',
          mediated:
            'client writes the descriptor in its own memory, sends SQ_TAIL (4 bytes) to the mediating broker, ' +
            'which stores it into the queue page it maps and replies; the client waits for the reply on its ' +
            'event loop (as VfioUserClient does), then spins on the completion',
        },
      };
    } finally {
      await client.exit();
      await mediator?.stop();
      await rig.close();
      tmp.remove();
    }
  },
);
