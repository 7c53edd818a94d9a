// Mapping.unmapMany(): what unmap() does to each mapping, in as few mmap calls
// as adjacent ranges allow (the simulator releasing a reclaimed lease's maps
// at once; issue 16). Whatever the runs, every file mapping goes, each buffer
// then reads zero, guards stop, and bad input changes nothing.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { Mapping, MemFd, native } from '../../src/sys/index.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

/** Lines of /proc/self/maps that map a memfd whose name starts with `prefix`. */
function mapsOf(prefix: string): string[] {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes(`/memfd:${prefix}`));
}

/** `n` one-page memfds, each mapped (made in a burst: mostly adjacent), with a byte written. */
function burst(prefix: string, n: number, guard: boolean): { fds: MemFd[]; maps: Mapping[] } {
  const fds: MemFd[] = [];
  const maps: Mapping[] = [];
  for (let i = 0; i < n; i++) {
    const fd = MemFd.create(`${prefix}${i}`, { size: 4096 });
    fds.push(fd);
    const m = fd.map({ guard });
    m.u8[0] = i + 1;
    maps.push(m);
  }
  return { fds, maps };
}

test('64 maps made in a burst, guarded or not, all lose their file mapping and read zero', () => {
  for (const guard of [true, false]) {
    const prefix = `umany-${guard ? 'g' : 'p'}-`;
    const { fds, maps } = burst(prefix, 64, guard);
    try {
      assert.equal(mapsOf(prefix).length, 64);
      const runs = new Set(maps.map((m) => m.address)).size;
      assert.equal(runs, 64, 'each map has its own address');
      Mapping.unmapMany(maps);
      assert.deepEqual(mapsOf(prefix), [], 'no file mapping left');
      for (const m of maps) {
        assert.equal(m.closed, true);
        assert.equal(new Uint8Array(m.buffer)[0], 0, 'the buffer reads zero pages');
        assert.equal(m.isRevoked(), false);
        assert.throws(() => m.u8, { code: 'ERR_DEVLEASE_CLOSED' });
      }
      Mapping.unmapMany(maps); // idempotent
    } finally {
      for (const fd of fds) fd.close();
    }
  }
});

test('gaps, mixed protections, duplicates and mappings already unmapped', () => {
  const { fds, maps } = burst('umany-mix-', 12, true);
  // A read-only mapping in the middle, and a hole: every other one of the last four is left mapped.
  const ro = Mapping.map(fds[0]!.fd, { length: 4096, prot: 'r' });
  try {
    maps[3]!.unmap();
    const keep = [maps[8]!, maps[10]!];
    const drop = maps.filter((m) => !keep.includes(m));
    Mapping.unmapMany([...drop, ro, drop[0]!, drop[5]!]);
    assert.equal(mapsOf('umany-mix-').length, 2, 'only the two left out stay mapped');
    for (const m of keep) assert.equal(m.u8[0], maps.indexOf(m) + 1, 'and still read their bytes');
    assert.equal(ro.closed, true);
    Mapping.unmapMany(keep);
    assert.deepEqual(mapsOf('umany-mix-'), []);
  } finally {
    for (const fd of fds) fd.close();
  }
});

test('a buffer the addon did not map is refused and nothing is unmapped', () => {
  const { fds, maps } = burst('umany-bad-', 3, false);
  try {
    const foreign = new SharedArrayBuffer(4096);
    assert.throws(() => native.mappingUnmapMany([maps[0]!.buffer, foreign, maps[1]!.buffer]), {
      code: 'ERR_DEVLEASE_INVALID_ARG',
    });
    assert.equal(mapsOf('umany-bad-').length, 3, 'all three still mapped');
    assert.equal(maps[0]!.closed, false);
    Mapping.unmapMany(maps);
    assert.deepEqual(mapsOf('umany-bad-'), []);
  } finally {
    for (const fd of fds) fd.close();
  }
});
