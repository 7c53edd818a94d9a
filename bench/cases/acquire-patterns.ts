// Acquire message patterns at zero work: what reordering the acquire's messages could give, before
// building it. The lease-acquire case's floor (fixtures/acquire-floor.ts: client → broker → device, three
// processes, fds passed, no work per step) run with the acquire's own message pattern and with others
// (FloorPattern in fixtures/acquire-floor-wire.ts): the client's setup sent behind VERSION without waiting
// for its reply; the broker's relays (MSI-X SET_IRQS, DMA_MAP) sent at once behind the grant's commands; the
// grant's commands held until the setup arrives, so that the grant and the relays reach the device together
// (one device round trip instead of two, when the broker reads the setup before the device answers). Every
// row is a floor (zero work); the patterns alternate in chunks on one set of processes, each chunk starting
// from the next pattern, so each is compared with the acquire's own pattern under the same placement and
// load (issue 16, twenty-second pass). The CPU in each row's note comes from /proc in 10 ms ticks: over a
// full run's 500 acquires a pattern, it tells large differences only.
//
//   node dist/bench/cases/acquire-patterns.js [--quick]

import { AcquireFloor, type FloorSample } from '../fixtures/acquire-floor.js';
import type { FloorPattern } from '../fixtures/acquire-floor-wire.js';
import { type Metric, metric, progress, runCase } from '../fixtures/result.js';
import { tempDir } from '../fixtures/rig.js';

interface Pattern {
  id: string;
  label: string;
  pattern: FloorPattern;
}

const PATTERNS: Pattern[] = [
  { id: 'own', label: "the acquire's own: VERSION, then the setup; relays after the grant", pattern: {} },
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
    id: 'grant-with-relays',
    label: 'broker: grant held for the setup, sent with its relays',
    pattern: { relayEarly: true, deferGrant: true },
  },
  {
    id: 'pipelined-relay-early',
    label: 'both sides: setup behind VERSION, relays at once',
    pattern: { pipelined: true, relayEarly: true },
  },
  {
    id: 'pipelined-grant-with-relays',
    label: 'both sides: setup behind VERSION, grant sent with the relays',
    pattern: { pipelined: true, relayEarly: true, deferGrant: true },
  },
];

runCase(
  'acquire-patterns',
  'Acquire message patterns at zero work (3 processes, fds passed)',
  async (quick) => {
    const tmp = tempDir('acquire-patterns');
    try {
      const floor = await AcquireFloor.start(tmp.dir);
      try {
        return await measure(floor, quick);
      } finally {
        await floor.close();
      }
    } finally {
      tmp.remove();
    }
  },
);

async function measure(floor: AcquireFloor, quick: boolean) {
  const n = quick ? 40 : 500;
  const warmup = quick ? 20 : 500;
  const chunks = quick ? 4 : 10;
  const budgetMs = quick ? 2000 : 20_000; // per chunk and pattern: only a crawling machine reaches it
  progress(`${PATTERNS.length} patterns, ${warmup} unmeasured acquires each`);
  // The warm-up taken as samples and dropped, not as run()'s own warm-up: its budget counts only once a
  // sample is kept.
  for (const p of PATTERNS) await runPattern(floor, p, warmup, 0, budgetMs * chunks);
  const samples = new Map<string, number[]>(PATTERNS.map((p) => [p.id, []]));
  const cpu = new Map(PATTERNS.map((p) => [p.id, { client: 0, broker: 0, device: 0, samples: 0 }]));
  progress(`${n} acquires each, alternating in ${chunks} chunks`);
  for (let c = 0; c < chunks; c++) {
    // Each chunk starts from the next pattern, so none always follows the same one; 2 unmeasured acquires
    // after each switch.
    for (let i = 0; i < PATTERNS.length; i++) {
      const p = PATTERNS[(i + c) % PATTERNS.length]!;
      Object.assign(floor.cpu, { client: 0, broker: 0, device: 0, samples: 0 });
      const got = await runPattern(floor, p, Math.ceil(n / chunks), 2, budgetMs);
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
    // Every row is a floor (zero work); the acquire's own pattern is the one the others are compared with.
    return metric(p.id, p.label, 'µs', samples.get(p.id)!, {
      role: 'floor',
      ...(p.id === 'own' ? {} : { ref: 'own' }),
      note: `CPU/acquire µs: client ${per(c.client)}, broker ${per(c.broker)}, device ${per(c.device)}`,
    });
  });
  return {
    metrics,
    notes: {
      patterns: Object.fromEntries(PATTERNS.map((p) => [p.id, p.pattern])),
      method:
        'the lease-acquire floor (bench/fixtures/acquire-floor.ts) per pattern on one set of processes, the patterns alternating in chunks, each chunk starting from the next; connect to the first doorbell answered; CPU from /proc in 10 ms ticks (large differences only)',
    },
  };
}

/** One floor run of a pattern; a failure names the pattern. */
async function runPattern(
  floor: AcquireFloor,
  p: Pattern,
  n: number,
  warmup: number,
  budgetMs: number,
): Promise<FloorSample[]> {
  try {
    return await floor.run(n, warmup, budgetMs, p.pattern);
  } catch (err) {
    throw new Error(`pattern ${p.id}: ${(err as Error).message}`, { cause: err });
  }
}
