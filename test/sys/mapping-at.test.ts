// Mapping.map({ at }): a mapping placed exactly where asked, or nowhere. The simulator places DMA maps next to
// each other with it (src/sim/host/dma-placement.ts), so it must never replace what is already mapped: a live
// mapping there keeps its memory, and the caller learns EEXIST.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { type Fd, Mapping, MemFd, native } from '../../src/sys/index.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

const PAGE = 4096;

/** Two guarded mappings of `a` and `b` at a free address and the page after it (found again if taken meanwhile). */
function mapTwoAdjacent(a: Fd, b: Fd): [Mapping, Mapping] {
  for (let attempt = 0; ; attempt++) {
    const base = native.findFreeRange(2 * PAGE);
    let first: Mapping | null = null;
    try {
      first = Mapping.map(a, { length: PAGE, at: base, guard: true });
      return [first, Mapping.map(b, { length: PAGE, at: base + BigInt(PAGE), guard: true })];
    } catch (err) {
      first?.unmap();
      // Another thread of this process mapped into the range between the two calls: look again, once.
      if ((err as { code?: string }).code !== 'EEXIST' || attempt > 0) throw err;
    }
  }
}

test('a mapping goes exactly at a free address, and the next one right after it', () => {
  using a = MemFd.create('test-at-a', { size: PAGE });
  using b = MemFd.create('test-at-b', { size: PAGE });
  const [first, second] = mapTwoAdjacent(a.fd, b.fd);
  try {
    assert.equal(second.address, first.address + BigInt(PAGE), 'adjacent');
    assert.equal(first.address % BigInt(PAGE), 0n, 'page-aligned');
    first.u32[0] = 0xa;
    second.u32[0] = 0xb;
    for (const [memfd, want] of [
      [a, 0xa],
      [b, 0xb],
    ] as const) {
      const check = memfd.map({ length: PAGE });
      try {
        assert.equal(check.u32[0], want, 'each mapping is of its own file');
      } finally {
        check.unmap();
      }
    }
    assert.equal(
      native.mappingUnmapMany([first.buffer, second.buffer]),
      1,
      'adjacent: one mmap call drops both',
    );
  } finally {
    Mapping.unmapMany([first, second]);
  }
});

test('a mapping asked for where something is mapped fails with EEXIST and replaces nothing', () => {
  using a = MemFd.create('test-at-held', { size: 2 * PAGE });
  using b = MemFd.create('test-at-intruder', { size: PAGE });
  const held = Mapping.map(a.fd, { length: 2 * PAGE, guard: true });
  try {
    held.u32[PAGE / 4] = 0x5eed;
    // Over its second page: a range that only partly overlaps is refused too.
    assert.throws(
      () => Mapping.map(b.fd, { length: PAGE, at: held.address + BigInt(PAGE) }),
      (err: NodeJS.ErrnoException) => err.code === 'EEXIST' && err.syscall === 'mmap',
    );
    assert.equal(held.u32[PAGE / 4], 0x5eed, 'the held mapping still reaches its own memory');
    const again = a.map({ length: 2 * PAGE });
    try {
      assert.equal(again.u32[PAGE / 4], 0x5eed, 'and it is the file the held mapping shows');
    } finally {
      again.unmap();
    }
  } finally {
    held.unmap();
  }
});

test('an address that is not page-aligned, zero, negative, too large or not a bigint is refused, nothing mapped', () => {
  using a = MemFd.create('test-at-bad', { size: PAGE });
  const base = native.findFreeRange(PAGE);
  for (const at of [base + 1n, 0n, -BigInt(PAGE), 1n << 64n]) {
    assert.throws(
      () => Mapping.map(a.fd, { length: PAGE, at }),
      { code: 'ERR_DEVLEASE_INVALID_ARG' },
      `${at}`,
    );
  }
  assert.throws(() => native.mmap(a.fd.fd, PAGE, 3, 0, false, PAGE as unknown as bigint), {
    code: 'ERR_DEVLEASE_INVALID_ARG',
  });
  // Nothing was left at the free address the bad tries were near: a mapping still goes there exactly.
  const m = Mapping.map(a.fd, { length: PAGE, at: base });
  try {
    assert.equal(m.address, base);
  } finally {
    m.unmap();
  }
});
