// Memory without an fd (policy.dma_without_fd = "relay", docs/CONFIG.md "DMA memory without an fd"): a NOP
// doorbell → completion on a stock client's queue (no devlease client library, as QEMU's) whose rings are
// in memory the broker relays — the device reads the descriptor and writes the completion by DMA_READ and
// DMA_WRITE to the broker, which sends each on to the client — against the same queue with its rings in a
// memfd mapped with its fd, measured in the same run, alternating in blocks. The client waits on its event
// loop either way (it serves the relayed accesses there); the device polls (--idle-poll-us 0).
//
//   node dist/bench/cases/dma-relay.js [--quick]

import { ClientProc } from '../fixtures/client-proc.js';
import { type Metric, metric, progress, runCase } from '../fixtures/result.js';
import { startRig } from '../fixtures/rig.js';

runCase('dma-relay', 'NOP with rings in memory without an fd (relayed) vs with an fd', async (quick) => {
  const n = quick ? 100 : 1000;
  const blocks = quick ? 2 : 6;
  const rig = await startRig({
    simArgs: ['--queues', '4', '--idle-poll-us', '0'],
    config: { policy: { dma_without_fd: 'relay' } },
  });
  const client = await ClientProc.spawn();
  const samples = { fd: [] as number[], relayed: [] as number[] };
  try {
    progress(`${blocks} blocks of ${n} NOPs each way`);
    for (let b = 0; b < blocks; b++) {
      for (const relayed of b % 2 ? [true, false] : [false, true]) {
        const r = await client.call<number[]>('stockNops', {
          socket: rig.socket,
          relayed,
          n,
          warmup: Math.ceil(n / 10),
          budgetMs: quick ? 2000 : 20_000,
        });
        (relayed ? samples.relayed : samples.fd).push(...r);
      }
    }
  } finally {
    await client.exit();
    await rig.close();
  }
  const metrics: Metric[] = [
    metric('nop-stock-fd', 'NOP, a stock client, rings in a memfd mapped with its fd', 'µs', samples.fd, {
      role: 'baseline',
    }),
    metric(
      'nop-stock-relayed',
      'NOP, the same, rings mapped without an fd: descriptor read and completion written through the broker',
      'µs',
      samples.relayed,
      { ref: 'nop-stock-fd' },
    ),
  ];
  return { metrics };
});
