// Case 3, DMA_MAP + DMA_UNMAP of 4 KiB and 2 MiB: mediated (client → broker
// → device, the window and policy checked on the way) against direct (a
// VfioUserClient that is the owner of a second simulator, no broker). The
// same memfd is mapped and unmapped at the same IOVA each time, so memfd
// creation is not measured.
//
// The floor of the ratio: a relay adds at least one hop per call, so the
// least a broker can do is direct + one echo round trip with the fd attached
// for DMA_MAP and one without for DMA_UNMAP (rows "relay hop", measured
// against a minimal vfio-user echo server from the same client, alternating
// with and without an fd), plus its own checks.
//
// Measured in steady state: 3000 unmeasured pairs each way first (a broker's
// code takes that long to be optimized), then each block's own warm-up.
//
//   node dist/bench/cases/dma-map.js [--quick]

import { join } from 'node:path';
import { MemFd } from '../../src/sys/index.js';
import { checkDmaFd } from '../../src/vfio/user/dma-fd-check.js';
import { ClientProc, spawnReady } from '../fixtures/client-proc.js';
import { RequestProbe } from '../fixtures/request-probe.js';
import { type Metric, metric, progress, runCase } from '../fixtures/result.js';
import { startBareSim, startRig, tempDir } from '../fixtures/rig.js';

/** Direct and mediated alternate in this many blocks per size. */
const BLOCKS = 5;

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
  const probe = new RequestProbe(rig.broker);
  const echoDir = tempDir('echo');
  const echoSocket = join(echoDir.dir, 'echo.sock');
  const echo = await spawnReady('region-echo-server.js', [echoSocket]);
  const metrics: Metric[] = [];
  const median = (a: readonly number[]) => [...a].sort((x, y) => x - y)[a.length >> 1] ?? 0;
  try {
    await client.call('lease', { socket: rig.socket });
    // The lease holds a queue with its kick fd, as a devlease client does: its enabled queue then costs the
    // device no polling (datasheet rev 2 §2.3). A lease without one leaves the device polling it every 50 µs
    // (15 % of a core), which on a small machine slows the mediated side only (the bare simulator has no
    // queue enabled).
    await client.call('idleQueue', { kick: true });
    // Steady state first: a broker serves for days, and its code (and the simulator's and the client's) takes
    // ~2000–3000 map+unmap pairs to be optimized (measured: the broker's CPU per pair fell 460 → 94 µs over
    // the first 3000). Without this the first blocks measured mostly V8's warm-up, the mediated side's more
    // than the direct side's. Direct and mediated alike, alternating; nothing here is measured.
    const steady = quick ? 200 : 3000;
    progress(`steady state: ${steady} map+unmap pairs direct and ${steady} mediated, not measured`);
    for (let b = 0; b < BLOCKS; b++) {
      const args = { size: 4096, n: 0, warmup: Math.ceil(steady / BLOCKS) };
      await client.call('dma', { ...args, direct: bare.socket });
      await client.call('dma', args);
    }
    probe.take();
    progress(`relay hop: ${n} echo round trips with an fd attached, alternating with ${n} without`);
    const hop = await client.call<{ withFd: number[]; bare: number[] }>('echoFd', {
      socket: echoSocket,
      n,
      warmup,
      budgetMs,
    });
    const hopMap = median(hop.withFd);
    const hopUnmap = median(hop.bare);
    metrics.push(
      metric('hop-fd', 'relay hop: echo round trip with an SCM_RIGHTS fd', 'µs', hop.withFd, {
        role: 'floor',
      }),
      metric('hop-bare', '· relay hop: echo round trip, no fd', 'µs', hop.bare, { role: 'floor' }),
    );
    type Pairs = { map: number[]; unmap: number[] };
    for (const s of SIZES) {
      // Direct and mediated in alternating blocks, each with its own warm-up: both see the same minutes of
      // a shared machine, and neither is measured while its process's code paths are still cold.
      progress(`${s.label}: ${n} map+unmap pairs direct and ${n} mediated, in ${BLOCKS} alternating blocks`);
      const direct: Pairs = { map: [], unmap: [] };
      const med: Pairs = { map: [], unmap: [] };
      const calls = new Map<string, number[]>();
      for (let b = 0; b < BLOCKS; b++) {
        const args = { size: s.bytes, n: Math.ceil(n / BLOCKS), warmup, budgetMs: budgetMs / BLOCKS };
        const d = await client.call<Pairs>('dma', { ...args, direct: bare.socket });
        direct.map.push(...d.map);
        direct.unmap.push(...d.unmap);
        probe.take();
        const m = await client.call<Pairs>('dma', args);
        med.map.push(...m.map);
        med.unmap.push(...m.unmap);
        // The broker's samples of the measured pairs (the block's warm-up ones come first).
        for (const [k, v] of probe.take()) calls.set(k, [...(calls.get(k) ?? []), ...v.slice(-m.map.length)]);
      }
      if (process.env.DEBUG_PROBE) console.error([...calls].map(([k, v]) => `${k}: ${v.length}`));
      const got = (k: string) => calls.get(k) ?? [];
      // What the broker itself adds: its session's time per request minus the device call it waited for.
      const own = (session: string, device: string) => {
        const dev = got(device);
        return got(session).map((t, i) => t - (dev[i] ?? 0));
      };
      const pair = (r: { map: number[]; unmap: number[] }) => r.map.map((m, i) => m + r.unmap[i]!);
      metrics.push(
        metric(`direct-${s.name}`, `${s.label} map+unmap, direct to the device`, 'µs', pair(direct), {
          role: 'baseline',
        }),
        metric(`mediated-${s.name}`, `${s.label} map+unmap, through the broker`, 'µs', pair(med), {
          ref: `direct-${s.name}`,
        }),
        // The best any relay can do (the bound of the ratio): each direct pair plus the two hops' medians.
        metric(
          `relay-floor-${s.name}`,
          `· ${s.label} least through a relay: direct + one echo hop per call`,
          'µs',
          pair(direct).map((d) => d + hopMap + hopUnmap),
          { ref: `direct-${s.name}` },
        ),
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
        metric(
          `broker-${s.name}-map`,
          `· ${s.label} DMA_MAP in the broker (request in → reply out)`,
          'µs',
          got('session: dmaMap'),
        ),
        metric(
          `broker-${s.name}-map-device`,
          `·· waiting on the device's DMA_MAP`,
          'µs',
          got('device: dmaMap'),
        ),
        metric(
          `broker-${s.name}-map-own`,
          `·· the broker's own work (window, fd check, policy, bookkeeping)`,
          'µs',
          own('session: dmaMap', 'device: dmaMap'),
        ),
        metric(`broker-${s.name}-map-policy`, `··· policy checkMap()`, 'µs', got('policy: checkMap()')),
        metric(`broker-${s.name}-map-usage`, `··· usage() bookkeeping`, 'µs', got('bookkeeping: usage()')),
        metric(
          `broker-${s.name}-unmap`,
          `· ${s.label} DMA_UNMAP in the broker (request in → reply out)`,
          'µs',
          got('session: dmaUnmap'),
        ),
        metric(
          `broker-${s.name}-unmap-own`,
          `·· the broker's own work (lookup, policy, bookkeeping)`,
          'µs',
          own('session: dmaUnmap', 'device: dmaUnmap'),
        ),
      );
    }
    // The broker's DMA_MAP fd check (statx, F_GET_SEALS and F_GETFL of the client's memfd), alone in this process.
    const memfd = MemFd.create('bench-fd-check', { size: 4096 });
    const fdCheck: number[] = [];
    try {
      for (let i = 0; i < (quick ? 500 : 5000); i++) {
        const t0 = performance.now();
        checkDmaFd(memfd.fd, { offset: 0n, size: 4096n, write: true }, 'memory');
        fdCheck.push((performance.now() - t0) * 1000);
      }
    } finally {
      memfd.close();
    }
    metrics.push(
      metric(
        'broker-fd-check',
        '· DMA_MAP fd check (statx, F_GET_SEALS, F_GETFL), measured alone',
        'µs',
        fdCheck,
      ),
    );
    return {
      metrics,
      notes: {
        simulator: '--queues 4, default --idle-poll-us 50, both instances',
        lease: 'holds an idle Sa1Queue with its kick fd (no device polling); maps at the top of its window',
      },
    };
  } finally {
    probe.close();
    await echo.stop();
    echoDir.remove();
    await client.exit();
    await bare.close();
    await rig.close();
  }
});
