// Acquire message patterns at zero work: what reordering the acquire's messages could give, before
// building it. The lease-acquire case's floor (fixtures/acquire-floor.ts: client → broker → device, three
// processes, fds passed, no work per step) run with the acquire's own message pattern and with others
// (FloorPattern in fixtures/acquire-floor-wire.ts): the client's setup sent behind VERSION without waiting
// for its reply; the broker's relays (MSI-X SET_IRQS, DMA_MAP) sent at once behind the grant's commands; the
// grant's commands held until the setup arrives, so that the grant and the relays reach the device together
// (one device round trip instead of two). The patterns alternate in chunks on one set of processes, so each
// is compared with the acquire's own pattern under the same placement and load (issue 16, twenty-second pass).
//
//   node dist/bench/cases/acquire-patterns.js [--quick]

import { AcquireFloor } from '../fixtures/acquire-floor.js';
import type { FloorPattern } from '../fixtures/acquire-floor-wire.js';
import { type Metric, metric, progress, runCase } from '../fixtures/result.js';
import { tempDir } from '../fixtures/rig.js';

interface Pattern {
  id: string;
  label: string;
  pattern: FloorPattern;
}

const PATTERNS: Pattern[] = [
  { id: 'today', label: "the acquire's own: VERSION, then the setup; relays after the grant", pattern: {} },
  {
    id: 'pipelined',
    label: 'client: setup sent behind VERSION, not waiting for it',
    pattern: { pipelined: true },
  },
  {
    id: 'relay-early',
    label: 'broker: relays sent at once, behind the grant',
    pattern: { relayEarly: true },
  },
  {
    id: 'one-device-rt',
    label: 'broker: grant held for the setup, relays behind it (1 device round trip)',
    pattern: { relayEarly: true, deferGrant: true },
  },
  {
    id: 'pipelined-relay-early',
    label: 'both sides: setup behind VERSION, relays at once',
    pattern: { pipelined: true, relayEarly: true },
  },
  {
    id: 'pipelined-one-device-rt',
    label: 'both sides: setup behind VERSION, 1 device round trip',
    pattern: { pipelined: true, relayEarly: true, deferGrant: true },
  },
];

runCase(
  'acquire-patterns',
  'Acquire message patterns at zero work (3 processes, fds passed)',
  async (quick) => {
    const n = quick ? 40 : 500;
    const warmup = quick ? 20 : 500;
    const chunks = quick ? 4 : 10;
    const budgetMs = quick ? 2000 : 20_000; // per chunk and pattern: only a crawling machine reaches it
    const tmp = tempDir('acquire-patterns');
    const floor = await AcquireFloor.start(tmp.dir);
    try {
      progress(`${PATTERNS.length} patterns, ${warmup} unmeasured acquires each`);
      for (const p of PATTERNS) await floor.run(warmup, 0, budgetMs * chunks, p.pattern);
      const samples = new Map<string, number[]>(PATTERNS.map((p) => [p.id, []]));
      const cpu = new Map(PATTERNS.map((p) => [p.id, { client: 0, broker: 0, device: 0, samples: 0 }]));
      progress(`${n} acquires each, alternating in ${chunks} chunks`);
      for (let c = 0; c < chunks; c++) {
        for (const p of PATTERNS) {
          Object.assign(floor.cpu, { client: 0, broker: 0, device: 0, samples: 0 });
          const got = await floor.run(Math.ceil(n / chunks), 0, budgetMs, p.pattern);
          samples.get(p.id)!.push(...got.map((s) => s.total));
          const sum = cpu.get(p.id)!;
          sum.client += floor.cpu.client;
          sum.broker += floor.cpu.broker;
          sum.device += floor.cpu.device;
          sum.samples += floor.cpu.samples;
        }
      }
      const metrics: Metric[] = PATTERNS.map((p) => {
        const c = cpu.get(p.id)!;
        const per = (ms: number): string => ((ms * 1000) / c.samples).toFixed(0);
        return metric(p.id, p.label, 'µs', samples.get(p.id)!, {
          ...(p.id === 'today' ? { role: 'baseline' as const } : { ref: 'today' }),
          note: `CPU/acquire µs: client ${per(c.client)}, broker ${per(c.broker)}, device ${per(c.device)}`,
        });
      });
      return {
        metrics,
        notes: {
          patterns: Object.fromEntries(PATTERNS.map((p) => [p.id, p.pattern])),
          method:
            'the lease-acquire floor (bench/fixtures/acquire-floor.ts) per pattern, on one set of processes, the patterns alternating in chunks; connect to the first doorbell answered',
        },
      };
    } finally {
      await floor.close();
      tmp.remove();
    }
  },
);
