// The client's record of its DMA maps (src/vfio/user/dma-maps.ts), which serves the server's DMA_READ and
// DMA_WRITE: kept sorted and searched, so a broker holding every lease's maps finds, adds and takes out a
// lease's maps among all the others without walking them (issue 16, seventeenth pass). And closeSoon: a window
// unmap's fds are closed once the caller has gone on, not before it resolves.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { setImmediate as immediate } from 'node:timers/promises';
import { MemFd } from '../../src/sys/memfd.js';
import { ClientDmaMaps } from '../../src/vfio/user/dma-maps.js';
import { vfio_user_dma_region_access } from '../../src/vfio/user/messages.js';
import { VFIO_USER_F_DMA_REGION_READ, VFIO_USER_F_DMA_REGION_WRITE } from '../../src/vfio/user/protocol.js';
import { memfdFdCount, trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

const RW = VFIO_USER_F_DMA_REGION_READ | VFIO_USER_F_DMA_REGION_WRITE;
const PAGE = 0x1000n;

const readAt = (maps: ClientDmaMaps, addr: bigint, count: number) =>
  maps.read(vfio_user_dma_region_access.encode({ addr, count: BigInt(count) }));

/** Maps of 1 page at every other page from `base`, added in shuffled order, each from its own memfd. */
function fill(maps: ClientDmaMaps, name: string, n: number, base = 0x10_0000n): MemFd[] {
  const mems: MemFd[] = [];
  const order = Array.from({ length: n }, (_, i) => (i * 7) % n); // 7 and n coprime: a permutation
  for (const i of order) {
    const mem = MemFd.create(name, { size: Number(PAGE) });
    mems[i] = mem;
    assert.ok(
      maps.add({
        iova: base + BigInt(2 * i) * PAGE,
        size: PAGE,
        flags: RW,
        fd: mem.fd,
        offset: 0n,
        memory: null,
      }),
    );
  }
  return mems;
}

test('maps added in any order are found by address; one overlapping either neighbour is refused', async () => {
  const maps = new ClientDmaMaps(1 << 20);
  const mems = fill(maps, 'dma-maps-find', 64);
  try {
    assert.equal(maps.size, 64);
    const iovas = maps.entries().map((e) => e.iova);
    assert.deepEqual(
      iovas,
      [...iovas].sort((a, b) => (a < b ? -1 : 1)),
      'kept sorted by iova',
    );
    for (const i of [0, 1, 31, 63]) {
      const start = 0x10_0000n + BigInt(2 * i) * PAGE;
      // A map's first byte, one inside, its last: each found in that map (a read of 1 byte needs no more).
      for (const at of [start, start + 1n, start + PAGE - 1n]) {
        const reply = await readAt(maps, at, 1);
        assert.equal(
          reply.byteLength,
          vfio_user_dma_region_access.size + 1,
          `a read at 0x${at.toString(16)}`,
        );
      }
    }
    await assert.rejects(
      readAt(maps, 0x10_0000n - 1n, 1),
      { code: 'EFAULT' },
      'the byte before the first map',
    );
    // The gap between two maps, and past the last: no map there.
    await assert.rejects(readAt(maps, 0x10_0000n + PAGE, 4), { code: 'EFAULT' });
    await assert.rejects(readAt(maps, 0x10_0000n + 128n * PAGE, 4), { code: 'EFAULT' });
    // An access running from one map into the gap after it.
    await assert.rejects(readAt(maps, 0x10_0000n + PAGE - 2n, 4), { code: 'EFAULT' });

    const extra = MemFd.create('dma-maps-find', { size: Number(3n * PAGE) });
    try {
      const at = (iova: bigint, size: bigint) =>
        maps.add({ iova, size, flags: RW, fd: extra.fd, offset: 0n, memory: null });
      assert.equal(at(0x10_0000n + PAGE / 2n, PAGE), null, 'overlaps the map before it');
      assert.equal(at(0x10_0000n + PAGE, PAGE + 1n), null, 'overlaps the map after it');
      assert.equal(at(0x10_0000n + 2n * PAGE, PAGE), null, 'the same start as a map');
      assert.equal(at(0x10_0000n - PAGE, 3n * PAGE), null, 'covers a whole map');
      assert.equal(at(0x10_0000n + PAGE, 0n), null, 'empty');
      assert.equal(maps.size, 64, 'nothing refused was recorded');
      const gap = at(0x10_0000n + PAGE, PAGE);
      assert.ok(gap, 'the page between two maps is free');
      maps.remove(gap);
      assert.equal(maps.size, 64);
    } finally {
      extra.close();
    }
  } finally {
    maps.removeRange(0n, 0n, true);
    for (const m of mems) m.close();
  }
  assert.equal(memfdFdCount('dma-maps-find'), 0);
});

test('removeRange takes out exactly the maps inside the range, and closes their fds at once by default', () => {
  const maps = new ClientDmaMaps(1 << 20);
  const mems = fill(maps, 'dma-maps-range', 40);
  try {
    // [map 10's start, map 20's end - 1): maps 10..19 are inside; map 20 runs past the end and stays.
    const from = 0x10_0000n + 20n * PAGE;
    maps.removeRange(from, 20n * PAGE + PAGE - 1n, false);
    const left = maps.entries().map((e) => Number((e.iova - 0x10_0000n) / (2n * PAGE)));
    assert.deepEqual(left, [
      ...Array.from({ length: 10 }, (_, i) => i),
      ...Array.from({ length: 20 }, (_, i) => i + 20),
    ]);
    assert.equal(
      memfdFdCount('dma-maps-range'),
      40 + 30,
      'our copies of the 10 maps were closed before it returned',
    );
    maps.removeRange(0x900_0000n, PAGE, false); // nothing there
    assert.equal(maps.size, 30);
    // A range starting inside map 0 and ending inside map 1: neither is inside it, both stay.
    maps.removeRange(0x10_0000n + 1n, 2n * PAGE, false);
    assert.equal(maps.size, 30);
    maps.removeRange(0n, 0n, true);
    assert.equal(maps.size, 0);
    assert.equal(memfdFdCount('dma-maps-range'), 40);
  } finally {
    for (const m of mems) m.close();
  }
  assert.equal(memfdFdCount('dma-maps-range'), 0);
});

test('closeSoon: the fds of the maps a range took out are closed after the caller went on, in the same loop turn', async () => {
  const maps = new ClientDmaMaps(1 << 20, true);
  const mems = fill(maps, 'dma-maps-soon', 8);
  try {
    maps.removeRange(0x10_0000n, 8n * PAGE, false); // maps 0..3
    assert.equal(maps.size, 4, 'out of the record at once');
    await assert.rejects(readAt(maps, 0x10_0000n, 4), { code: 'EFAULT' }, 'and served no more');
    assert.equal(memfdFdCount('dma-maps-soon'), 8 + 8, 'still open while the caller goes on');
    await immediate();
    assert.equal(memfdFdCount('dma-maps-soon'), 8 + 4, 'closed in the same turn of the event loop');
    maps.removeRange(0n, 0n, true);
    await immediate();
  } finally {
    for (const m of mems) m.close();
  }
  assert.equal(memfdFdCount('dma-maps-soon'), 0);
});
