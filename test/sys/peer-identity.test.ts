// Acceptance: peer credentials, supplementary groups and the peer's pidfd are
// correct; the pidfd fires after SIGKILL of the peer.
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { Fd, native, PidFd, SeqpacketSocket } from '../../src/sys/index.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { Peer } from '../helpers/sys-peer.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test('peerCred and peerPidfd name the process at the other end', async () => {
  const peer = await Peer.spawn();
  try {
    const cred = peer.socket.peerCred();
    assert.equal(cred.pid, peer.pid);
    assert.equal(cred.uid, process.getuid!());
    assert.equal(cred.gid, process.getgid!());
    const reported = await peer.call('pid');
    assert.equal(reported.pid, peer.pid);
    using pidfd = peer.socket.peerPidfd();
    assert.equal(pidfd.pid, peer.pid);
  } finally {
    await peer.stop();
  }
});

test('the peer pidfd fires after SIGKILL, and the socket reports the hang-up', async () => {
  const peer = await Peer.spawn();
  using pidfd = peer.socket.peerPidfd();
  const exited = new Promise<void>((resolve) => pidfd.onExit(resolve));
  const hungUp = new Promise<void>((resolve) => peer.socket.once('close', () => resolve()));
  assert.equal(pidfd.exited, false);
  pidfd.sendSignal('SIGKILL');
  await exited;
  assert.equal(pidfd.exited, true);
  await hungUp;
  const { signal } = await peer.exited;
  assert.equal(signal, 'SIGKILL');
  // onExit after the fact still calls back.
  await new Promise<void>((resolve) => pidfd.onExit(resolve));
  assert.throws(() => pidfd.sendSignal(0), { code: 'ESRCH', syscall: 'pidfd_send_signal' });
});

test('PidFd.open of this process; a socketpair peer is ourselves', () => {
  using self = PidFd.open(process.pid);
  assert.equal(self.pid, process.pid);
  self.sendSignal(0);
  const [a, b] = SeqpacketSocket.pair();
  try {
    assert.equal(a.peerCred().pid, process.pid);
    using p = a.peerPidfd();
    assert.equal(p.pid, process.pid);
  } finally {
    a.close();
    b.close();
  }
});

test('PidFd.open of a process that does not exist throws ESRCH', () => {
  // pid_max is at most 2^22; this pid cannot exist.
  assert.throws(() => PidFd.open(2 ** 22 + 1), { code: 'ESRCH', errno: 3, syscall: 'pidfd_open' });
});

test("PidFd.adopt reads a handed-over pidfd's pid from /proc/self/fdinfo", async () => {
  const peer = await Peer.spawn();
  try {
    using fresh = PidFd.open(peer.pid);
    // What a broker upgrade carries over: a pidfd of unknown origin (here a dup), pid unknown.
    using adopted = PidFd.adopt(new Fd(native.dup(fresh.fd.fd)));
    assert.equal(adopted.pid, peer.pid);
    using self = PidFd.adopt(new Fd(native.pidfdOpen(process.pid)));
    assert.equal(self.pid, process.pid);
  } finally {
    await peer.stop();
  }
});

// A socketpair's peer credentials are its creator's at socketpair(): this process's, with the groups it had then.
test("peerGroups are the peer's supplementary groups at connect(), however many, not its groups now", () => {
  assert.equal(
    process.getuid?.(),
    0,
    'this test needs root: it sets its own supplementary groups (setgroups)',
  );
  // The supplementary groups as the kernel has them: Node's getgroups() adds the effective gid, which a
  // setgroups() of that list would then add for good.
  const saved = (readFileSync('/proc/self/status', 'utf8').match(/^Groups:[ \t]*(.*)$/m)?.[1] ?? '')
    .split(/\s+/)
    .filter(Boolean)
    .map(Number);
  // More than the addon's first getsockopt holds (64): the kernel's ERANGE, then the size it names.
  const many = Array.from({ length: 1000 }, (_, i) => 70_000 + i);
  const pairs: SeqpacketSocket[][] = [];
  try {
    process.setgroups!([]);
    pairs.push(SeqpacketSocket.pair());
    process.setgroups!([70_001, 70_000]);
    pairs.push(SeqpacketSocket.pair());
    process.setgroups!(many);
    pairs.push(SeqpacketSocket.pair());
    process.setgroups!([4242]); // what the process has now is no socket's
    assert.deepEqual(pairs[0]![0]!.peerGroups(), []);
    assert.deepEqual(pairs[1]![1]!.peerGroups(), [70_000, 70_001]); // the kernel keeps them sorted
    assert.deepEqual(pairs[2]![0]!.peerGroups(), many);
  } finally {
    for (const p of pairs) for (const s of p) s.close();
    process.setgroups!(saved);
  }
});

test('peerGroups of a descriptor that is no socket is a SysError naming getsockopt (ENOTSOCK)', () => {
  const file = openSync('/dev/null', 'r');
  try {
    assert.throws(() => native.peerGroups(file), { code: 'ENOTSOCK', errno: 88, syscall: 'getsockopt' });
  } finally {
    closeSync(file);
  }
});
