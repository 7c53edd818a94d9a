// One chaos victim: a real client process using the devlease client library,
// going through one part of a lease's lifecycle in a loop until the chaos
// runner SIGKILLs it. It reports where it is over IPC ('start' just before
// connecting, 'working' once the phase's work runs, with the lease id) so the
// runner can aim the kill. Errors (the device recovering, a revoked lease)
// are reported and the lifecycle starts over: the runner kills mid-retry too.
//   argv: <lease socket> <phase: connect|dma|queue|revoke> <seed> [comply]
import type { DmaBuffer } from '../../src/client/dma.js';
import { connect, type Lease } from '../../src/client/lease.js';
import { Sa1Queue } from '../../src/client/sa1-queue.js';
import { rng } from '../helpers/rng.js';

const [socket, phase, seedArg, comply] = process.argv.slice(2) as [string, string, string, string?];
const r = rng(Number(seedArg));
const say = (m: Record<string, unknown>) => process.send?.(m);
const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

async function dmaChurn(lease: Lease): Promise<never> {
  const held: DmaBuffer[] = [];
  say({ m: 'working', lease: lease.info.lease });
  for (;;) {
    if (held.length > 0 && (held.length >= 8 || r.chance(0.5))) {
      await held.splice(r.int(0, held.length - 1), 1)[0]!.free();
    } else {
      const b = await lease.dma.alloc(4096 * r.int(1, 64));
      b.u8.fill(r.int(0, 255));
      held.push(b);
    }
  }
}

async function queueWork(lease: Lease): Promise<never> {
  const q = await Sa1Queue.create(lease, { entries: 16 });
  const src = await lease.dma.alloc(65536);
  const dst = await lease.dma.alloc(65536);
  src.u8.fill(0x5a);
  say({ m: 'working', lease: lease.info.lease });
  for (;;) {
    const n = r.int(1, 8);
    const all: Promise<unknown>[] = [];
    for (let i = 0; i < n; i++) all.push(q.copy(src.iova, dst.iova, r.int(1, 65536)));
    await Promise.all(all);
  }
}

async function held(lease: Lease): Promise<never> {
  await lease.dma.alloc(4096 * r.int(1, 16));
  if (comply === 'comply') lease.on('revoke-requested', () => setTimeout(() => lease.close(), r.int(0, 50)));
  say({ m: 'working', lease: lease.info.lease });
  for (;;) await sleep(1000);
}

async function lifecycle(): Promise<void> {
  say({ m: 'start' });
  const lease = await connect({ socket, request: {} });
  lease.on('error', () => {}); // reported through the failing calls
  try {
    if (phase === 'dma') await dmaChurn(lease);
    else if (phase === 'queue') await queueWork(lease);
    else await held(lease); // 'connect' and 'revoke'
  } finally {
    lease.close();
  }
}

for (;;) {
  try {
    await lifecycle();
  } catch (err) {
    say({ m: 'error', code: (err as { code?: string }).code ?? 'none', message: (err as Error).message });
    await sleep(r.int(5, 50));
  }
}
