// Acceptance: the owner of a memfd observes the release of a description it
// handed to another process. An inotify IN_CLOSE watch on
// /proc/self/fd/<owner's fd> fires only once the other process has BOTH
// closed its fd and unmapped its mapping (either order); the F_SETLEASE
// probe agrees at every step.
//
// Mechanism (measured): the handed-out description comes from reopen()
// (open of /proc/self/fd/N), not from memfd_create, whose pseudo-file
// description raises no inotify events and is not counted by the lease
// check. A mapping holds a reference to its description, so the
// description -- and with it IN_CLOSE and the lease count -- goes only with
// the last of fd and mapping.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { IN_CLOSE, IN_CLOSE_WRITE, Inotify, Mapping, MemFd, othersHaveOpen } from '../../src/sys/index.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { Peer } from '../helpers/sys-peer.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

/** Lets the loop deliver any inotify readiness already queued. */
const turn = () => new Promise((resolve) => setImmediate(resolve));

for (const order of [
  ['closeFd', 'unmap'],
  ['unmap', 'closeFd'],
] as const) {
  test(`IN_CLOSE and the lease probe see the release only after ${order.join(' then ')}`, async () => {
    using memfd = MemFd.create(`release-${order[0]}`, { size: 4096 });
    using inotify = new Inotify();
    const closes: number[] = [];
    let released!: () => void;
    const releasedOnce = new Promise<void>((resolve) => {
      released = resolve;
    });
    inotify.watch(`/proc/self/fd/${memfd.fd.fd}`, IN_CLOSE, (ev) => {
      closes.push(ev.mask);
      released();
    });
    assert.equal(othersHaveOpen(memfd.fd), false, 'nobody else has it yet');

    const peer = await Peer.spawn();
    try {
      const shared = memfd.reopen();
      assert.equal(othersHaveOpen(memfd.fd), true, 'our re-opened description counts');
      const took = await peer.call('take', {}, [shared]);
      shared.close(); // the peer's copy keeps the description alive
      const fd = (took.indices as number[])[0];
      const { mapping } = await peer.call('map', { fd, length: 4096, guard: false });
      await turn();
      assert.deepEqual(closes, [], 'no IN_CLOSE while the peer holds fd and mapping');
      assert.equal(othersHaveOpen(memfd.fd), true);

      const [first, second] = order;
      await peer.call(first, first === 'closeFd' ? { fd } : { mapping });
      await turn();
      await turn();
      assert.deepEqual(closes, [], `no IN_CLOSE after only ${first}`);
      assert.equal(othersHaveOpen(memfd.fd), true, `still open elsewhere after only ${first}`);

      await peer.call(second, second === 'closeFd' ? { fd } : { mapping });
      await releasedOnce;
      assert.deepEqual(closes, [IN_CLOSE_WRITE], 'one IN_CLOSE_WRITE for the read-write description');
      assert.equal(othersHaveOpen(memfd.fd), false, 'released everywhere');
    } finally {
      await peer.stop();
    }
  });
}

test('in one process too, a description lives on in its mapping until unmapped', () => {
  using memfd = MemFd.create('self-map', { size: 4096 });
  using own = memfd.map(); // the same description as memfd.fd: never "other"
  assert.equal(othersHaveOpen(memfd.fd), false);
  const other = memfd.reopen('r');
  const mapping = Mapping.map(other, { length: 4096, prot: 'r' });
  other.close();
  assert.equal(othersHaveOpen(memfd.fd), true, 'the mapping keeps the read-only description open');
  mapping.unmap();
  assert.equal(othersHaveOpen(memfd.fd), false);
  own.unmap();
});
