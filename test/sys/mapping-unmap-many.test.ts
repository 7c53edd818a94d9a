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

/** The permissions /proc/self/maps gives the page at `address` ("rw-p", "r--s", ...). */
function permsAt(address: bigint): string {
  for (const line of readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    const [range, perms] = line.split(' ');
    if (!range || !perms) continue;
    const [lo, hi] = range.split('-').map((h) => BigInt(`0x${h}`));
    if (address >= lo! && address < hi!) return perms;
  }
  throw new Error(`nothing mapped at 0x${address.toString(16)}`);
}

/** The runs of adjacent ranges among `maps`, all of one protection (what one mmap each can cover). */
function runsOf(maps: readonly Mapping[]): number {
  const sorted = [...maps].sort((a, b) => (a.address < b.address ? -1 : 1));
  let runs = 0;
  for (let i = 0; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    if (!prev || prev.address + BigInt(prev.length) !== sorted[i]!.address) runs++;
  }
  return runs;
}

/** `n` one-page memfds, each mapped (made in a burst: mostly adjacent), with a byte written; disposing of it unmaps
 * what is left and closes the memfds. */
function burst(prefix: string, n: number, guard: boolean): { fds: MemFd[]; maps: Mapping[] } & Disposable {
  const fds: MemFd[] = [];
  const maps: Mapping[] = [];
  for (let i = 0; i < n; i++) {
    const fd = MemFd.create(`${prefix}${i}`, { size: 4096 });
    fds.push(fd);
    const m = fd.map({ guard });
    m.u8[0] = i + 1;
    maps.push(m);
  }
  return {
    fds,
    maps,
    [Symbol.dispose]() {
      for (const m of maps) m.unmap();
      for (const fd of fds) fd.close();
    },
  };
}

test('64 maps made in a burst, guarded or not, all lose their file mapping and read zero', () => {
  for (const guard of [true, false]) {
    const prefix = `umany-${guard ? 'g' : 'p'}-`;
    using b = burst(prefix, 64, guard);
    const { maps } = b;
    assert.equal(mapsOf(prefix).length, 64);
    const runs = runsOf(maps);
    assert.ok(runs < 64, `a burst of maps is adjacent (found ${runs} runs in 64)`);
    const calls = native.mappingUnmapMany(maps.map((m) => m.buffer));
    assert.equal(calls, runs, 'one mmap per run of adjacent ranges');
    Mapping.unmapMany(maps); // marks them (the native call above already dropped them)
    assert.deepEqual(mapsOf(prefix), [], 'no file mapping left');
    for (const m of maps) {
      assert.equal(permsAt(m.address), 'rw-p', 'private zero pages, read-write');
      assert.equal(m.closed, true);
      assert.equal(new Uint8Array(m.buffer)[0], 0, 'the buffer reads zero pages');
      assert.equal(m.isRevoked(), false);
      assert.throws(() => m.u8, { code: 'ERR_DEVLEASE_CLOSED' });
    }
    Mapping.unmapMany(maps); // idempotent
  }
});

test('gaps, mixed protections, duplicates and mappings already unmapped', () => {
  using b = burst('umany-mix-', 12, true);
  const { fds, maps } = b;
  // A read-only mapping in the middle, and a hole: every other one of the last four is left mapped.
  using ro = Mapping.map(fds[0]!.fd, { length: 4096, prot: 'r' });
  maps[3]!.unmap();
  const keep = [maps[8]!, maps[10]!];
  const drop = maps.filter((m) => !keep.includes(m));
  const roAddress = ro.address;
  Mapping.unmapMany([...drop, ro, drop[0]!, drop[5]!]);
  assert.equal(mapsOf('umany-mix-').length, 2, 'only the two left out stay mapped');
  assert.equal(permsAt(roAddress), 'r--p', 'the read-only one keeps its protection');
  for (const m of drop) assert.equal(permsAt(m.address), 'rw-p', 'and the others theirs');
  for (const m of keep) assert.equal(m.u8[0], maps.indexOf(m) + 1, 'and still read their bytes');
  assert.equal(ro.closed, true);
  Mapping.unmapMany(keep);
  assert.deepEqual(mapsOf('umany-mix-'), []);
});

test('a buffer the addon did not map is refused and nothing is unmapped', () => {
  using b = burst('umany-bad-', 3, false);
  const { maps } = b;
  const foreign = new SharedArrayBuffer(4096);
  assert.throws(() => native.mappingUnmapMany([maps[0]!.buffer, foreign, maps[1]!.buffer]), {
    code: 'ERR_DEVLEASE_INVALID_ARG',
  });
  assert.equal(mapsOf('umany-bad-').length, 3, 'all three still mapped');
  assert.equal(maps[0]!.closed, false);
  Mapping.unmapMany(maps);
  assert.deepEqual(mapsOf('umany-bad-'), []);
});

test('the native call skips buffers already unmapped, in a run or alone', () => {
  using b = burst('umany-skip-', 6, true);
  const { maps } = b;
  maps[2]!.unmap();
  maps[5]!.unmap();
  // The live ones' runs: 2, done, breaks 0,1 from 3,4; 5, done, is skipped alone.
  const live = [0, 1, 3, 4].map((i) => maps[i]!);
  const runs = runsOf(live);
  assert.equal(native.mappingUnmapMany(maps.map((m) => m.buffer)), runs);
  assert.deepEqual(mapsOf('umany-skip-'), []);
  assert.equal(native.mappingUnmapMany(maps.map((m) => m.buffer)), 0, 'all done: no call');
});
