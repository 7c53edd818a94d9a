// Where the simulator maps an owner's DMA memory (src/sim/host/dma-placement.ts; issue 16, sixteenth pass):
// a lease's maps lie next to each other even when two leases map at the same time, so the unmap of a lease's
// window drops them in one mmap call (a TLB flush on the other CPU each), and a place that is taken is never
// taken over: the map goes elsewhere and works as before.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { Mapping, MemFd } from '../../src/sys/index.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { bootedRig, mappingsOf, openFds } from './helpers/real.js';

after(trackFdLeaks());

const PAGE = 0x1000n;

/** [start, end) of every mapping (in this process: the simulator runs in it) of memfds named `prefix`*. */
function rangesOf(prefix: string): [bigint, bigint][] {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes(`/memfd:${prefix}`))
    .map(
      (l) =>
        l
          .split(' ')[0]!
          .split('-')
          .map((h) => BigInt(`0x${h}`)) as [bigint, bigint],
    )
    .sort((a, b) => (a[0] < b[0] ? -1 : 1));
}

/** How many runs of adjacent ranges `ranges` (sorted) make. */
function runs(ranges: [bigint, bigint][]): number {
  return ranges.filter((r, i) => i === 0 || ranges[i - 1]![1] !== r[0]).length;
}

test("two leases mapping at once each get their maps together, and each window's unmap is one mmap call", async () => {
  const before = openFds();
  const r = await bootedRig();
  const memfds: MemFd[] = [];
  try {
    const windows = [0x100_0000n, 0x200_0000n];
    const name = (k: number) => `sa1-test-place-${process.pid}-${k}-`;
    const placedBefore = (await r.sim.stats()).dmaMapsPlaced;
    // Interleaved, as leases set up together map: left to the kernel, each map would land just below the
    // last one made, the other lease's.
    for (let i = 0; i < 16; i++) {
      for (const [k, base] of windows.entries()) {
        const memfd = MemFd.create(`${name(k)}${i}`, { size: Number(PAGE) });
        memfds.push(memfd);
        await r.client.dmaMap({ fd: memfd.fd, iova: base + BigInt(i) * PAGE, size: PAGE, flags: 3 });
      }
    }
    for (const k of [0, 1]) {
      const ranges = rangesOf(name(k));
      assert.equal(ranges.length, 16, `lease ${k}: every map is mapped once`);
      assert.equal(runs(ranges), 1, `lease ${k}: its 16 maps lie next to each other`);
    }
    assert.equal(
      (await r.sim.stats()).dmaMapsPlaced - placedBefore,
      32,
      'every map went where it was placed',
    );
    for (const [k, base] of windows.entries()) {
      const calls = (await r.sim.stats()).dmaUnmapCalls;
      await r.client.dmaUnmap({ iova: base, size: 16n * PAGE });
      assert.equal(
        (await r.sim.stats()).dmaUnmapCalls - calls,
        1,
        `lease ${k}: one mmap call dropped its 16 maps`,
      );
      assert.equal(
        rangesOf(name(k)).length,
        0,
        `lease ${k}: once DMA_UNMAP is answered the device maps none of it`,
      );
    }
  } finally {
    for (const m of memfds) m.close();
    await r.close();
  }
  assert.equal(openFds(), before, 'every fd opened for the test was closed');
});

test('a place someone else maps is left to them: the map goes elsewhere and the device still uses it', async () => {
  const r = await bootedRig();
  const first = MemFd.create(`sa1-test-taken-first-${process.pid}`, { size: Number(PAGE) });
  const second = MemFd.create(`sa1-test-taken-second-${process.pid}`, { size: Number(PAGE) });
  const mine = MemFd.create(`sa1-test-taken-mine-${process.pid}`, { size: Number(PAGE) });
  let squatter: Mapping | null = null;
  try {
    await r.client.dmaMap({ fd: first.fd, iova: 0x100_0000n, size: PAGE, flags: 3 });
    const [[, end]] = rangesOf(`sa1-test-taken-first-${process.pid}`) as [[bigint, bigint]];
    // This process (the simulator's) maps something of its own right where the next map would go.
    squatter = Mapping.map(mine.fd, { length: Number(PAGE), at: end });
    squatter.u32[0] = 0x5eed;
    const { dmaMapsPlaced: placed, dmaMapsUnplaced: unplaced } = await r.sim.stats();
    await r.client.dmaMap({ fd: second.fd, iova: 0x100_0000n + PAGE, size: PAGE, flags: 3 });
    assert.equal(squatter.u32[0], 0x5eed, 'the mapping that was there is untouched');
    assert.equal(mappingsOf(`sa1-test-taken-mine-${process.pid}`), 1);
    assert.equal(mappingsOf(`sa1-test-taken-second-${process.pid}`), 1, 'the new map is mapped, elsewhere');
    const after = await r.sim.stats();
    assert.deepEqual(
      [after.dmaMapsPlaced - placed, after.dmaMapsUnplaced - unplaced],
      [1, 0],
      'it went to a run slot, not where the kernel chose',
    );
    await r.client.dmaUnmap({ iova: 0x100_0000n, size: 2n * PAGE });
    assert.equal(mappingsOf(`sa1-test-taken-second-${process.pid}`), 0);
    assert.equal(squatter.u32[0], 0x5eed, 'and the unmap did not touch it either');
  } finally {
    squatter?.unmap();
    for (const m of [first, second, mine]) m.close();
    await r.close();
  }
});

test('one buffer mapped and unmapped over and over is placed every time, behind the last one', async () => {
  // More rounds than the placement has slots: a new run that took a fresh slot each time would find every slot
  // still holding an earlier map's zero pages (collected only by a GC) and pay failed placements per map.
  const r = await bootedRig();
  const memfd = MemFd.create(`sa1-test-churn-${process.pid}`, { size: Number(PAGE) });
  try {
    const before = await r.sim.stats();
    const addresses = new Set<bigint>();
    for (let i = 0; i < 300; i++) {
      await r.client.dmaMap({ fd: memfd.fd, iova: 0x100_0000n, size: PAGE, flags: 3 });
      addresses.add(rangesOf(`sa1-test-churn-${process.pid}`)[0]![0]);
      await r.client.dmaUnmap({ iova: 0x100_0000n, size: PAGE });
    }
    const after = await r.sim.stats();
    assert.deepEqual(
      [after.dmaMapsPlaced - before.dmaMapsPlaced, after.dmaMapsUnplaced - before.dmaMapsUnplaced],
      [300, 0],
      'every map went where it was placed',
    );
    const sorted = [...addresses].sort((a, b) => (a < b ? -1 : 1));
    assert.equal(
      sorted.length,
      300,
      'each one a page of its own (the ones before still hold their zero pages)',
    );
    assert.equal(sorted.at(-1)! - sorted[0]!, 299n * PAGE, 'one after another: 300 pages, one run');
  } finally {
    memfd.close();
    await r.close();
  }
});
