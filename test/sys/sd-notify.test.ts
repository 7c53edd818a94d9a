// systemd's notify protocol as the broker speaks it after an upgrade (MAINPID=): one datagram to NOTIFY_SOCKET,
// a path or an abstract name ('@'), received here by Python's socket module, with no child process and no fd
// left behind; an address it cannot send to is an error that says so.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { native } from '../../src/sys/index.js';
import { assertNoFdLeak } from '../helpers/fds.js';
import { type NotifyReceiver, notifyReceiver } from '../helpers/notify-receiver.js';
import { childTrace } from '../helpers/proc-stat.js';
import { until } from '../interop/helpers/peers.js';

const receivers: NotifyReceiver[] = [];
after(() => {
  for (const r of receivers) r.close();
});

for (const abstract of [false, true]) {
  test(`sdNotify delivers one datagram to ${abstract ? 'an abstract name (@…)' : 'a socket path'}`, async () => {
    const r = await notifyReceiver({ abstract });
    receivers.push(r);
    // The receiver is this process's child already: sdNotify must add none, running or reaped.
    const before = childTrace(process.pid);
    await assertNoFdLeak(async () => {
      native.sdNotify(r.address, Buffer.from('MAINPID=4242\n'));
      native.sdNotify(r.address, Buffer.from('STATUS=upgraded\n'));
      await until('both messages', () => r.messages.length >= 2, 10_000);
    });
    assert.deepEqual(r.messages, ['MAINPID=4242', 'STATUS=upgraded']);
    assert.deepEqual(
      childTrace(process.pid),
      before,
      'no child process was started (none left, none reaped)',
    );
  });
}

test('sdNotify: an address it cannot use is an error naming the syscall and errno, with no fd left open', async () => {
  const before = childTrace(process.pid);
  await assertNoFdLeak(async () => {
    assert.throws(() => native.sdNotify('vsock:2:1234', Buffer.from('READY=1')), {
      code: 'EAFNOSUPPORT',
      syscall: 'sendto',
    });
    assert.throws(() => native.sdNotify('/nonexistent/devlease/notify.sock', Buffer.from('READY=1')), {
      code: 'ENOENT',
      syscall: 'connect',
    });
    assert.throws(() => native.sdNotify(`/${'x'.repeat(200)}`, Buffer.from('READY=1')), {
      code: 'ENAMETOOLONG',
    });
  });
  assert.deepEqual(childTrace(process.pid), before, 'no child process was started');
});
