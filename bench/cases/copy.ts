// Case 6, COPY throughput at 4 KiB, 64 KiB and 1 MiB: one COPY descriptor
// at a time through the device (client spinning on the completion, device
// spinning: --idle-poll-us 0) against TypedArray.set of the same bytes
// between the same two buffers, in the same client process (its own loop
// first, so it runs with warm caches: a floor, not a fair fight).
//
//   node dist/bench/cases/copy.js [--quick]

import { ClientProc } from '../fixtures/client-proc.js';
import { type Metric, metric, progress, runCase } from '../fixtures/result.js';
import { startRig } from '../fixtures/rig.js';

const SIZES = [
  { bytes: 4096, label: '4 KiB' },
  { bytes: 65536, label: '64 KiB' },
  { bytes: 1024 * 1024, label: '1 MiB' },
];

const gbps = (bytes: number, us: number): string => `${(bytes / us / 1000).toFixed(2)} GB/s`;

runCase('copy', 'COPY throughput vs memcpy (TypedArray.set)', async (quick) => {
  const n = quick ? 300 : 3000;
  const rig = await startRig({ simArgs: ['--queues', '4', '--idle-poll-us', '0'] });
  const client = await ClientProc.spawn();
  const metrics: Metric[] = [];
  try {
    await client.call('lease', { socket: rig.socket });
    progress(`${n} COPYs and memcpys of each size`);
    const r = await client.call<Record<string, { device: number[]; memcpy: number[] }>>('copy', {
      sizes: SIZES.map((s) => s.bytes),
      n,
      warmup: Math.ceil(n / 10),
      budgetMs: quick ? 2000 : 30_000,
    });
    for (const s of SIZES) {
      const { device, memcpy } = r[s.bytes]!;
      const dev = metric(`copy-${s.bytes}`, `COPY ${s.label} through the device`, 'µs', device, {
        ref: `memcpy-${s.bytes}`,
      });
      const cpu = metric(`memcpy-${s.bytes}`, `memcpy ${s.label} (TypedArray.set)`, 'µs', memcpy, {
        role: 'baseline',
      });
      dev.note = gbps(s.bytes, dev.median);
      cpu.note = gbps(s.bytes, cpu.median);
      metrics.push(cpu, dev);
    }
    return {
      metrics,
      notes: {
        simulator: '--queues 4 --idle-poll-us 0',
        method: 'one descriptor in flight; time per op, median → GB/s; buffers are the lease DMA buffers',
      },
    };
  } finally {
    await client.exit();
    await rig.close();
  }
});
