// Case: the hot path from the C client (libdevlease, clients/c) beside the TypeScript client and the
// shared-memory floor, in one run: one SA-1 NOP, doorbell to completion seen, device and client spinning.
//   floor      two processes ping-ponging through a shared memfd
//   nop-ts     Sa1Queue (TypeScript) submit + spinUntil
//   nop-clib   devlease_sa1_submit + devlease_sa1_wait (C, spinning)
//
//   node dist/bench/cases/clib-hot-path.js [--quick]

import { buildClibBench, nopClib } from '../fixtures/clib.js';
import { ClientProc } from '../fixtures/client-proc.js';
import { floor } from '../fixtures/pingpong-floor.js';
import { metric, progress, runCase } from '../fixtures/result.js';
import { startRig } from '../fixtures/rig.js';

runCase(
  'clib-hot-path',
  'Hot path from C: SA-1 NOP, doorbell to completion (libdevlease beside the TypeScript client)',
  async (quick) => {
    const n = quick ? 3000 : 20_000;
    const warmup = quick ? 500 : 2000;
    const budgetMs = quick ? 3000 : 30_000;
    const bench = buildClibBench();
    progress(`floor: shared-memory ping-pong, ${n * 5} round trips`);
    const floorSamples = await floor(n * 5, budgetMs);
    const rig = await startRig({ simArgs: ['--queues', '4', '--idle-poll-us', '0'] });
    const client = await ClientProc.spawn();
    try {
      progress(`TypeScript: Sa1Queue, ${n} NOPs`);
      await client.call('lease', { socket: rig.socket });
      const ts = await client.call<number[]>('nopQueue', { n, warmup, budgetMs });
      await client.call('releaseAll');
      progress(`C: libdevlease, ${n} NOPs`);
      const c = await nopClib(bench, rig.socket, { n, warmup, budgetMs });
      return {
        metrics: [
          metric('floor', 'shared-memory ping-pong (2 processes, Atomics)', 'µs', floorSamples, {
            role: 'floor',
          }),
          metric('nop-ts', 'NOP direct: TypeScript Sa1Queue submit + spinUntil', 'µs', ts, { ref: 'floor' }),
          metric('nop-clib', 'NOP direct: C devlease_sa1_submit + wait', 'µs', c, { ref: 'floor' }),
        ],
        notes: {
          simulator: '--idle-poll-us 0 (the device worker spins)',
          clib: 'clients/c built -O2 (make); clib-bench spins on the completion ring (spin_us 1 s)',
        },
      };
    } finally {
      await client.exit();
      await rig.close();
    }
  },
);
