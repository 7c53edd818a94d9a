// Case 3, DMA_MAP + DMA_UNMAP of 4 KiB and 2 MiB: mediated (client → broker
// → device, the window and policy checked on the way) against direct (a
// VfioUserClient that is the owner of a second simulator, no broker). The
// same memfd is mapped and unmapped at the same IOVA each time, so memfd
// creation is not measured.
//
//   node dist/bench/cases/dma-map.js [--quick]

import { ClientProc } from '../fixtures/client-proc.js';
import { type Metric, metric, progress, runCase } from '../fixtures/result.js';
import { startBareSim, startRig } from '../fixtures/rig.js';

const SIZES = [
  { bytes: 4096, name: '4k', label: '4 KiB' },
  { bytes: 2 * 1024 * 1024, name: '2m', label: '2 MiB' },
];

runCase('dma-map', 'DMA_MAP + DMA_UNMAP: through the broker vs straight to the device', async (quick) => {
  const n = quick ? 150 : 1000;
  const warmup = quick ? 20 : 100;
  const budgetMs = quick ? 2000 : 30_000;
  const rig = await startRig({ simArgs: ['--queues', '4'] });
  const bare = await startBareSim(['--queues', '4']);
  const client = await ClientProc.spawn();
  const metrics: Metric[] = [];
  try {
    await client.call('lease', { socket: rig.socket });
    for (const s of SIZES) {
      progress(`${s.label}: ${n} map+unmap pairs direct, then mediated`);
      const direct = await client.call<{ map: number[]; unmap: number[] }>('dma', {
        size: s.bytes,
        n,
        warmup,
        budgetMs,
        direct: bare.socket,
      });
      const med = await client.call<{ map: number[]; unmap: number[] }>('dma', {
        size: s.bytes,
        n,
        warmup,
        budgetMs,
      });
      const pair = (r: { map: number[]; unmap: number[] }) => r.map.map((m, i) => m + r.unmap[i]!);
      metrics.push(
        metric(`direct-${s.name}`, `${s.label} map+unmap, direct to the device`, 'µs', pair(direct), {
          role: 'baseline',
        }),
        metric(`mediated-${s.name}`, `${s.label} map+unmap, through the broker`, 'µs', pair(med), {
          ref: `direct-${s.name}`,
        }),
        metric(`mediated-${s.name}-map`, `· ${s.label} DMA_MAP through the broker`, 'µs', med.map, {
          ref: `direct-${s.name}-map`,
        }),
        metric(`direct-${s.name}-map`, `· ${s.label} DMA_MAP direct`, 'µs', direct.map, { role: 'baseline' }),
        metric(`mediated-${s.name}-unmap`, `· ${s.label} DMA_UNMAP through the broker`, 'µs', med.unmap, {
          ref: `direct-${s.name}-unmap`,
        }),
        metric(`direct-${s.name}-unmap`, `· ${s.label} DMA_UNMAP direct`, 'µs', direct.unmap, {
          role: 'baseline',
        }),
      );
    }
    return { metrics, notes: { simulator: '--queues 4, default --idle-poll-us 50, both instances' } };
  } finally {
    await client.exit();
    await bare.close();
    await rig.close();
  }
});
