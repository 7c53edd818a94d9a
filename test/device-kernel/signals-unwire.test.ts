// A REQ or ERR eventfd wired at open whose watch (its epoll registration) fails is
// closed, and its irq unwired: the kernel holds its own reference to the
// eventfd, so closing ours alone left the trigger in place, signalling an
// eventfd nobody reads (device-signals.ts). So is one whose watch fails when
// it is watched again after an upgrade's rollback (unhold). The watch is
// failed with the fail-nth hook (installed for this file, hence the dynamic
// imports); the unwire is SET_IRQS DATA_NONE|ACTION_TRIGGER, count 0, for that
// index, as the recorder sees it sent.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';

process.env.DEVLEASE_FAIL_NTH ??= '0';
const { failCall, failNthFired } = await import('../../src/sys/fail-nth.js');
const { openKernelDevice } = await import('../../src/device/kernel/open.js');
const { openFds, trackFdLeaks } = await import('../helpers/fds.js');
const { kernelError, le, Recorder } = await import('./helpers/recorder.js');
const { BDF, NR, scratchSysfs, standardReplies } = await import('./helpers/replies.js');
const { native } = await import('../../src/sys/native.js');
const { until } = await import('../helpers/broker-rig.js');

after(trackFdLeaks());

const eventfds = () => [...openFds().values()].filter((t) => t === 'anon_inode:[eventfd]').length;

/** struct vfio_irq_set { u32 argsz, flags, index, start, count }: DATA_NONE (0x1) | ACTION_TRIGGER (0x20), count 0. */
const unwireOf = (index: number) => le([4, 20], [4, 0x21], [4, index], [4, 0], [4, 0]);

/** Opens the device (`rec` has its replies) with the kth eventfd watch failing (1: REQ's watch, 2: ERR's). */
async function openFailingWatch(k: number, rec: InstanceType<typeof Recorder>) {
  using sysfs = scratchSysfs();
  const logs: string[] = [];
  const before = eventfds();
  failCall('pollShared', k);
  const dev = await openKernelDevice({ bdf: BDF, sys: rec, sysfsRoot: sysfs.root, log: (m) => logs.push(m) });
  return { dev, logs, fired: failNthFired(), opened: eventfds() - before };
}

for (const [k, index, name] of [
  [1, 4, 'device request'],
  [2, 3, 'error'],
] as const) {
  test(`a wired ${name} eventfd (index ${index}) that cannot be watched is unwired and closed`, async () => {
    const rec = new Recorder();
    standardReplies(rec);
    const { dev, logs, fired, opened } = await openFailingWatch(k, rec);
    try {
      assert.equal(fired, 'pollShared', 'the watch was failed');
      const sets = rec.ioctls(NR.VFIO_DEVICE_SET_IRQS).map((c) => c.arg as Uint8Array);
      const unwires = sets.filter((a) => a.byteLength === 20);
      assert.deepEqual(unwires, [unwireOf(index)], 'one SET_IRQS DATA_NONE|TRIGGER, count 0, for that index');
      assert.equal(sets.length, 3, 'REQ wired, ERR wired, and the one unwired');
      assert.equal(opened, 1, "only the other signal's eventfd is left open");
      assert.ok(
        logs.some((l) => l.includes(`index ${index}: its eventfd cannot be watched; unwired`)),
        logs.join('\n'),
      );
      assert.ok(logs.some((l) => l.includes(`no ${name} eventfd`)));
    } finally {
      await dev.close();
    }
  });
}

test('an unwire that fails is logged; the eventfd is closed all the same', async () => {
  const rec = new Recorder();
  standardReplies(rec);
  rec.replies.set(NR.VFIO_DEVICE_SET_IRQS, (arg) => {
    if ((arg as Uint8Array).byteLength === 20) throw kernelError('EIO'); // the DATA_NONE one
    return 0;
  });
  const { dev, logs, opened } = await openFailingWatch(1, rec);
  try {
    assert.deepEqual(
      rec
        .ioctls(NR.VFIO_DEVICE_SET_IRQS)
        .map((c) => c.arg as Uint8Array)
        .filter((a) => a.byteLength === 20),
      [unwireOf(4)],
    );
    assert.equal(opened, 1);
    assert.ok(
      logs.some((l) => /index 4: its eventfd cannot be watched, nor unwired .*EIO/.test(l)),
      logs.join('\n'),
    );
  } finally {
    await dev.close();
  }
});

/** The eventfd wired to irq `index` at open: the fd in its SET_IRQS (struct vfio_irq_set's data, at 20). */
function wiredFd(rec: InstanceType<typeof Recorder>, index: number): number {
  const arg = rec
    .ioctls(NR.VFIO_DEVICE_SET_IRQS)
    .map((c) => c.arg as Uint8Array)
    .find((a) => a.byteLength === 24 && new DataView(a.buffer, a.byteOffset).getUint32(8, true) === index);
  assert.ok(arg, `irq ${index} was wired`);
  return new DataView(arg.buffer, arg.byteOffset).getInt32(20, true);
}

// An upgrade's rollback watches the held signals again (DeviceSignals.unhold). One whose watch fails then was
// only logged: its irq stayed wired to an eventfd nobody read, so a device request or an AER error went unheard
// until the device closed. It is given up as at its wiring: unwired and closed, and handed over no more; the
// other signal is heard as before.
for (const [k, index, name, event, other, otherEvent] of [
  [1, 4, 'device request', 'release-requested', 3, 'error-reported'],
  [2, 3, 'error', 'error-reported', 4, 'release-requested'],
] as const) {
  test(`the ${name} eventfd (index ${index}), if it cannot be watched again after a hold, is unwired and closed`, async () => {
    const rec = new Recorder();
    standardReplies(rec);
    using sysfs = scratchSysfs();
    const logs: string[] = [];
    const dev = await openKernelDevice({
      bdf: BDF,
      sys: rec,
      sysfsRoot: sysfs.root,
      log: (m) => logs.push(m),
    });
    try {
      const otherFd = wiredFd(rec, other);
      const wired = eventfds();
      const setsBefore = rec.ioctls(NR.VFIO_DEVICE_SET_IRQS).length;
      dev.holdSignals();
      failCall('pollShared', k); // REQ is watched again first, then ERR
      await dev.unholdSignals();
      assert.equal(failNthFired(), 'pollShared', 'the watch was failed');
      assert.deepEqual(
        rec
          .ioctls(NR.VFIO_DEVICE_SET_IRQS)
          .slice(setsBefore)
          .map((c) => c.arg as Uint8Array),
        [unwireOf(index)],
        'one SET_IRQS DATA_NONE|TRIGGER, count 0, for that index',
      );
      assert.equal(eventfds(), wired - 1, 'its eventfd closed, the other kept');
      assert.ok(
        logs.some((l) =>
          l.includes(`index ${index}: its eventfd cannot be watched again (${event} unheard)`),
        ),
        logs.join('\n'),
      );
      assert.ok(logs.some((l) => l.includes(`index ${index}: its eventfd cannot be watched; unwired`)));
      let n = 0;
      const handed = dev.handover(() => n++);
      assert.deepEqual(
        handed.signals?.map((s) => s.index),
        [other],
        'the next broker is handed the one still wired',
      );
      const heard: string[] = [];
      dev.on(otherEvent, (why: string) => heard.push(why));
      native.eventfdWrite(otherFd, 1n); // the kernel's signal
      await until(`the ${otherEvent} signal, still watched, to be heard`, () => heard.length === 1);
    } finally {
      await dev.close();
    }
  });
}
