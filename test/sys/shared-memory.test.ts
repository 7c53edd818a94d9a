// Acceptance: a memfd shared by two processes shows writes both ways through
// Atomics; revocation by truncation leaves a guarded mapping alive (reading
// zero, reporting revoked) and kills an unguarded one with SIGBUS.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { MemFd } from '../../src/sys/index.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { Peer } from '../helpers/sys-peer.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const SIZE = 64 * 1024;

async function peerWithMapping(memfd: MemFd, guard: boolean): Promise<{ peer: Peer; mapping: number }> {
  const peer = await Peer.spawn();
  using shared = memfd.reopen();
  const took = await peer.call('take', {}, [shared]);
  const fd = (took.indices as number[])[0];
  const mapped = await peer.call('map', { fd, length: SIZE, guard });
  await peer.call('closeFd', { fd });
  return { peer, mapping: mapped.mapping as number };
}

test('writes through a shared memfd are seen both ways with Atomics', async () => {
  using memfd = MemFd.create('atomics', { size: SIZE });
  using mine = memfd.map();
  const { peer, mapping } = await peerWithMapping(memfd, false);
  try {
    // parent -> child
    Atomics.store(mine.u32, 10, 0xdeadbeef);
    assert.equal((await peer.call('load', { mapping, word: 10 })).value, 0xdeadbeef);
    // child -> parent
    await peer.call('store', { mapping, word: 11, value: 12345 });
    assert.equal(Atomics.load(mine.u32, 11), 12345);
    // The child sees a change made while it is already watching the word.
    const seen = peer.call('waitWord', { mapping, word: 12, value: 7 });
    Atomics.store(mine.u32, 12, 7);
    await seen;
    // Last word of the mapping too.
    const last = SIZE / 4 - 1;
    await peer.call('store', { mapping, word: last, value: 99 });
    assert.equal(Atomics.load(mine.u32, last), 99);
  } finally {
    await peer.stop();
  }
});

test('after truncation a guarded mapping in another process survives, reads zero and reports revoked', async () => {
  using memfd = MemFd.create('revoke-guarded', { size: SIZE });
  using mine = memfd.map();
  const { peer, mapping } = await peerWithMapping(memfd, true);
  try {
    Atomics.store(mine.u32, 3, 42);
    assert.equal((await peer.call('load', { mapping, word: 3 })).value, 42);
    assert.equal((await peer.call('revoked', { mapping })).revoked, false);
    memfd.truncate(0);
    assert.equal((await peer.call('load', { mapping, word: 3 })).value, 0);
    assert.equal((await peer.call('revoked', { mapping })).revoked, true);
    // Still alive and usable as plain (private) memory.
    await peer.call('store', { mapping, word: 3, value: 5 });
    assert.equal((await peer.call('load', { mapping, word: 3 })).value, 5);
  } finally {
    await peer.stop();
  }
  const { code, signal } = await peer.exited;
  assert.equal(signal, null);
  assert.equal(code, 0);
});

test('after truncation an unguarded mapping in another process dies of SIGBUS', async () => {
  using memfd = MemFd.create('revoke-unguarded', { size: SIZE });
  const { peer, mapping } = await peerWithMapping(memfd, false);
  try {
    assert.equal((await peer.call('load', { mapping, word: 3 })).value, 0);
    memfd.truncate(0);
    const r = await peer.request('load', { mapping, word: 3 });
    assert.equal(r.ok, false, 'the peer should not be able to answer');
    const { signal } = await peer.exited;
    assert.equal(signal, 'SIGBUS');
  } finally {
    await peer.stop();
  }
});

test('a guarded mapping in this process survives truncation too', () => {
  using memfd = MemFd.create('revoke-self', { size: SIZE });
  using m = memfd.map({ guard: true });
  m.u8[100] = 1;
  assert.equal(m.isRevoked(), false);
  memfd.truncate(0);
  assert.equal(m.u8[100], 0);
  assert.equal(m.isRevoked(), true);
  m.unmap();
  assert.equal(m.isRevoked(), true);
  assert.throws(() => m.u8, { code: 'ERR_DEVLEASE_CLOSED' });
});
