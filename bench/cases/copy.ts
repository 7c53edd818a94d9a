// Case 6, COPY throughput at 4 KiB, 64 KiB and 1 MiB: one COPY descriptor
// at a time through the device (client spinning on the completion, device
// spinning: --idle-poll-us 0) against TypedArray.set of the same bytes
// between the same two buffers, in the same client process (its own loop
// first, so it runs with warm caches: a floor, not a fair fight). The 4 KiB COPY is also measured with its
// source freshly written by the client, against a cross-core floor: another process copying bytes this
// one just wrote (copy-floor.ts).
//
//   node dist/bench/cases/copy.js [--quick]

import { ClientProc } from '../fixtures/client-proc.js';
import { crossCoreCopyFloor } from '../fixtures/copy-floor.js';
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
  // What any device on another core pays for a 4 KiB copy of data the client just wrote: the handoff there
  // and back plus the copy of 64 lines dirty in the client's cache (copy-floor.ts). Before the rig starts:
  // its device worker spins, and a third spinner on two cores would measure the scheduler.
  progress(`cross-core memcpy floor: ${n * 10} handoffs of 4 KiB`);
  const xcore = await crossCoreCopyFloor(4096, n * 10, quick ? 2000 : 30_000);
  const rig = await startRig({ simArgs: ['--queues', '4', '--idle-poll-us', '0'] });
  const client = await ClientProc.spawn();
  const metrics: Metric[] = [];
  try {
    await client.call('lease', { socket: rig.socket });
    progress(`${n} COPYs and memcpys of each size`);
    const r = await client.call<Record<string, { device: number[]; memcpy: number[] }>>('copy', {
      sizes: SIZES.map((s) => s.bytes),
      fresh: [4096],
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
    const floor = metric(
      'xcore-4096',
      'cross-core memcpy 4 KiB (other process copies what this one wrote)',
      'µs',
      xcore,
      {
        role: 'floor',
      },
    );
    const freshDev = metric(
      'copy-4096-fresh',
      'COPY 4 KiB, source written by the client before each',
      'µs',
      r['fresh-4096']!.device,
      {
        ref: 'xcore-4096',
      },
    );
    floor.note = gbps(4096, floor.median);
    freshDev.note = gbps(4096, freshDev.median);
    metrics.push(floor, freshDev);
    return {
      metrics,
      notes: {
        simulator: '--queues 4 --idle-poll-us 0',
        method: 'one descriptor in flight; time per op, median → GB/s; buffers are the lease DMA buffers',
        xcore:
          'floor for copy-4096-fresh: this process fills 4 KiB, then pings a peer process that copies it ' +
          '(TypedArray.set) and pongs; the COPY rows above reuse a source the device already holds in its cache',
      },
    };
  } finally {
    await client.exit();
    await rig.close();
  }
});
