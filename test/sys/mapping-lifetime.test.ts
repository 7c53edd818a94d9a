// A Mapping's lifetime: its SharedArrayBuffer is also its only native handle
// (no bound methods, no finalizer of its own). unmap() drops the file mapping
// at once and is idempotent; the range itself goes when the buffer is
// collected; the addon refuses a buffer it did not map.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Mapping, MemFd, native } from '../../src/sys/index.js';
import { trackFdLeaks } from '../helpers/fds.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const leakCheck = trackFdLeaks();
after(leakCheck);

const MiB = 1 << 20;

/** Lines of /proc/self/maps that map the memfd named `name`. */
function mapsOf(name: string): string[] {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes(`/memfd:${name} `));
}

/** This process's virtual size in bytes (VmSize). */
function vmSize(): number {
  const line = readFileSync('/proc/self/status', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('VmSize:'));
  return Number(/(\d+)/.exec(line!)![1]) * 1024;
}

test('unmap() and close() are idempotent and drop the file mapping at once; the buffer then reads zero', () => {
  using memfd = MemFd.create('lifetime-idem', { size: 4096 });
  const m = memfd.map();
  m.u8[7] = 9;
  assert.equal(mapsOf('lifetime-idem').length, 1);
  assert.equal(mapsOf('lifetime-idem')[0]!.split('-')[0], m.address.toString(16));
  m.unmap();
  m.unmap();
  m.close();
  m[Symbol.dispose]();
  assert.equal(m.closed, true);
  assert.equal(m.isRevoked(), false);
  assert.deepEqual(mapsOf('lifetime-idem'), []);
  assert.equal(new Uint8Array(m.buffer)[7], 0, 'a buffer outliving its unmap reads zero pages');
  assert.throws(() => m.u8, { code: 'ERR_DEVLEASE_CLOSED' });
});

test('1000 mappings mapped and closed leave no file mapping, and their ranges go when the buffers are collected', async () => {
  using memfd = MemFd.create('lifetime-many', { size: MiB });
  const before = vmSize();
  for (let i = 0; i < 1000; i++) {
    const m = Mapping.map(memfd.fd, { length: MiB, guard: i % 2 === 0 });
    m.u8[0] = i & 0xff;
    m.close();
  }
  assert.deepEqual(mapsOf('lifetime-many'), [], 'no mapping of the file is left after close()');
  // 1000 MiB of zero-page ranges stay reserved until the buffers are collected; then the backing stores'
  // deleters unmap them (V8 may free backing stores on a background thread: bounded wait).
  const deadline = Date.now() + 10_000;
  let grown = vmSize() - before;
  while (grown > 256 * MiB && Date.now() < deadline) {
    gc();
    await new Promise((r) => setTimeout(r, 10));
    grown = vmSize() - before;
  }
  assert.ok(grown <= 256 * MiB, `VmSize still ${Math.round(grown / MiB)} MiB above its start after GC`);
});

test('the addon refuses a buffer it did not map, with a clear error', () => {
  const misuse = { code: 'ERR_DEVLEASE_INVALID_ARG', message: /SharedArrayBuffer made by mmap/ };
  assert.throws(() => native.mappingUnmap(new SharedArrayBuffer(4096)), misuse);
  assert.throws(() => native.mappingRevoked(new SharedArrayBuffer(0)), misuse);
  assert.throws(() => native.mappingAddress({} as SharedArrayBuffer), misuse);
  assert.throws(() => native.mappingUnmap(new ArrayBuffer(8) as unknown as SharedArrayBuffer), misuse);
});
