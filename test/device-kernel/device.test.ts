// Kernel backend, the device fd: region info (argsz retry, capability chain),
// region access at the region offset, BAR mmap, SET_IRQS with eventfds,
// reset, and the dma-buf probe, against a recorder with canned kernel
// replies. These tests check encoding and sequence only; they do not pretend
// to be the kernel. The real proof is the guest tests (npm run test:kernel).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import type { KernelDevice } from '../../src/device/kernel/device.js';
import { openKernelDevice } from '../../src/device/kernel/open.js';
import { EventFd } from '../../src/sys/eventfd.js';
import { native } from '../../src/sys/native.js';
import { until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { le, Recorder } from './helpers/recorder.js';
import {
  BDF,
  irqSet,
  msixInfo,
  NR,
  regionOffset,
  SPARSE,
  scratchSysfs,
  standardReplies,
} from './helpers/replies.js';

after(trackFdLeaks());

const CDEV = '/dev/vfio/devices/vfio0';

async function withDevice(
  fn: (dev: KernelDevice, rec: Recorder) => Promise<void>,
  opts: { dmaBuf?: boolean } = {},
): Promise<void> {
  const rec = new Recorder();
  standardReplies(rec, opts);
  using sysfs = scratchSysfs();
  const dev = await openKernelDevice({ bdf: BDF, sys: rec, sysfsRoot: sysfs.root, log: () => {} });
  try {
    await fn(dev, rec);
  } finally {
    await dev.close();
  }
}

test('region info: asked again with the argsz the kernel wants, then the capability chain is read', async () => {
  await withDevice(async (dev, rec) => {
    const from = rec.ioctls(NR.VFIO_DEVICE_GET_REGION_INFO).length;
    const r = await dev.region(0);
    const calls = rec.ioctls(NR.VFIO_DEVICE_GET_REGION_INFO).slice(from);
    assert.equal(calls.length, 2);
    // struct vfio_region_info { u32 argsz, flags, index, cap_offset; u64 size, offset }
    assert.deepEqual(calls[0]!.arg, le([4, 32], [4, 0], [4, 0], [4, 0], [8, 0], [8, 0]));
    const second = calls[1]!.arg as Uint8Array;
    // 32 + sparse mmap (8 header + 8 + 2 areas × 16) + MSIX_MAPPABLE (8 header)
    assert.equal(second.byteLength, 32 + 48 + 8);
    assert.deepEqual(second.subarray(0, 32), le([4, 88], [4, 0], [4, 0], [4, 0], [8, 0], [8, 0]));
    assert.deepEqual(r, { index: 0, flags: 0xf, size: 1n << 20n, offset: 0n, sparse: SPARSE });
    await dev.region(0);
    assert.equal(rec.ioctls(NR.VFIO_DEVICE_GET_REGION_INFO).length, from + 2, 'region info is cached');

    const typed = await dev.region(9);
    assert.deepEqual(typed.type, { type: 0x80001234, subtype: 1 });
    assert.equal(typed.offset, regionOffset(9));
  });
});

test('region reads and writes go to pread/pwrite at the region offset, inside the region only', async () => {
  await withDevice(async (dev, rec) => {
    const from = rec.calls.length;
    await dev.write32(0, 0x04, 0x12345678);
    await dev.read64(0, 0x80);
    await dev.write(7, 4, new Uint8Array([6, 0]));
    assert.deepEqual(rec.lines(from), [
      `ioctl ${CDEV} 0x${NR.VFIO_DEVICE_GET_REGION_INFO.toString(16)}`, // region 0's info, once, with the argsz retry
      `ioctl ${CDEV} 0x${NR.VFIO_DEVICE_GET_REGION_INFO.toString(16)}`,
      `pwrite ${CDEV} 0x4`,
      `pread ${CDEV} 0x80`,
      `pwrite ${CDEV} 0x${(regionOffset(7) + 4n).toString(16)}`,
    ]);
    assert.deepEqual(rec.calls[from + 2]!.arg, le([4, 0x12345678]));
    assert.equal(rec.calls[from + 3]!.length, 8);
    await assert.rejects(dev.read(7, 250, 8), { code: 'EINVAL' });
    await assert.rejects(dev.write32(0, 0x100000, 1), { code: 'EINVAL' });
  });
});

test('BAR mmap at the region offset, inside a sparse-mmap area; unmapped when the device closes', async () => {
  const rec = new Recorder();
  standardReplies(rec);
  using sysfs = scratchSysfs();
  const dev = await openKernelDevice({ bdf: BDF, sys: rec, sysfsRoot: sysfs.root, log: () => {} });
  const bar = await dev.mapRegion(0, 0x2000n, 0x1000n);
  const mmap = rec.calls.find((c) => c.op === 'mmap')!;
  assert.equal(mmap.file, `${CDEV} (rw)`);
  assert.equal(mmap.offset, 0x2000n);
  assert.equal(bar.length, 0x1000);
  await assert.rejects(dev.mapRegion(0, 0x1000n, 0x1000n), /not in a mmap area/);
  await assert.rejects(dev.mapRegion(7), /cannot be mmapped/);
  await dev.close();
  assert.ok(rec.lines().includes(`munmap ${CDEV} (rw)`));
});

test('SET_IRQS: eventfds for a block of vectors (-1 unassigns), DATA_NONE to disable; IRQ info', async () => {
  await withDevice(async (dev, rec) => {
    // At open, the REQ (4) and ERR (3) irqs got an eventfd each of the device's own (device-signals.ts): nth 0
    // and 1 of each below.
    for (const [nth, index] of [
      [0, 4],
      [1, 3],
    ]) {
      assert.deepEqual(rec.argOf(NR.VFIO_DEVICE_GET_IRQ_INFO, nth), le([4, 16], [4, 0], [4, index], [4, 0]));
      assert.equal(
        rec.argOf(NR.VFIO_DEVICE_SET_IRQS, nth).subarray(4, 20).join(),
        le([4, 0x24], [4, index], [4, 0], [4, 1]).join(),
      );
    }
    msixInfo(rec, 8, 0x1); // MSI-X that resizes (dynamic MSI-X, Linux 6.5+): each block as asked
    using a = new EventFd();
    using b = new EventFd();
    await dev.setIrqs(2, 3, [a.fd, null, b.fd]);
    await dev.disableIrqs(2);
    assert.deepEqual(rec.argOf(NR.VFIO_DEVICE_SET_IRQS, 2), irqSet(2, 3, [a.fd.fd, -1, b.fd.fd]));
    assert.deepEqual(rec.argOf(NR.VFIO_DEVICE_SET_IRQS, 3), le([4, 20], [4, 0x21], [4, 2], [4, 0], [4, 0]));
    assert.equal(await dev.irqCount(2), 8);
    // struct vfio_irq_info { u32 argsz, flags, index, count }, as sent
    assert.deepEqual(rec.argOf(NR.VFIO_DEVICE_GET_IRQ_INFO, 2), le([4, 16], [4, 0], [4, 2], [4, 0]));
    assert.equal(rec.ioctls(NR.VFIO_DEVICE_GET_IRQ_INFO).length, 3, 'asked once per index');
  });
});

// Before dynamic MSI-X (Linux 6.5), and for MSI always, vfio-pci sizes the index at the SET_IRQS that enables
// it and refuses any vector past that (EINVAL) until it is disabled: one lease's vector 0 wired first left
// every other vector unwirable. Such an index (NORESIZE) is enabled whole.
test('SET_IRQS on an index the kernel sizes once (NORESIZE): enabled with every vector, then a block at a time', async () => {
  await withDevice(async (dev, rec) => {
    msixInfo(rec, 8, 0x9);
    using a = new EventFd();
    using b = new EventFd();
    await assert.rejects(dev.setIrqs(2, 7, [a.fd, b.fd]), /irq index 2 has 8 vectors: vectors 7\.\.8/);
    await dev.setIrqs(2, 3, [a.fd]);
    await dev.setIrqs(2, 5, [b.fd]);
    await dev.disableIrqs(2);
    await dev.setIrqs(2, 1, [b.fd]);
    await dev.setIrqs(1, 0, [a.fd]); // MSI (NORESIZE, one vector): whole is the vector asked
    const sets = rec
      .ioctls(NR.VFIO_DEVICE_SET_IRQS)
      .slice(2)
      .map((c) => c.arg);
    const _ = -1;
    assert.deepEqual(sets, [
      irqSet(2, 0, [_, _, _, a.fd.fd, _, _, _, _]),
      irqSet(2, 5, [b.fd.fd]),
      le([4, 20], [4, 0x21], [4, 2], [4, 0], [4, 0]),
      irqSet(2, 0, [_, b.fd.fd, _, _, _, _, _, _]),
      irqSet(1, 0, [a.fd.fd]),
    ]);
  });
});

// The kernel answers an enable it could allocate only part of with the count it could (vfio_msi_enable: a
// positive return, none allocated). Taken for success, the index was marked enabled with nothing wired.
test('SET_IRQS on a NORESIZE index the kernel can allocate only part of: asked again at that size, or ENOSPC', async () => {
  await withDevice(async (dev, rec) => {
    msixInfo(rec, 8, 0x9);
    let room = 4; // the host has 4 vectors for it
    rec.replies.set(NR.VFIO_DEVICE_SET_IRQS, (a) => {
      const dv = new DataView((a as Uint8Array).buffer, (a as Uint8Array).byteOffset);
      const [index, start, count] = [dv.getUint32(8, true), dv.getUint32(12, true), dv.getUint32(16, true)];
      return index === 2 && start + count > room ? room : 0;
    });
    using a = new EventFd();
    await assert.rejects(dev.setIrqs(2, 5, [a.fd]), {
      code: 'ENOSPC',
      message: /irq index 2: the kernel could allocate 4 of the 8 vectors asked \(vectors 5\.\.5 wanted\)/,
    });
    const from = rec.ioctls(NR.VFIO_DEVICE_SET_IRQS).length;
    await dev.setIrqs(2, 1, [a.fd]);
    const sent = rec
      .ioctls(NR.VFIO_DEVICE_SET_IRQS)
      .slice(from)
      .map((c) => c.arg);
    assert.deepEqual(sent, [
      irqSet(2, 0, [-1, a.fd.fd, -1, -1, -1, -1, -1, -1]),
      irqSet(2, 0, [-1, a.fd.fd, -1, -1]),
    ]);
    room = 8;
    await dev.setIrqs(2, 3, [a.fd]); // enabled (at 4): a block, not the whole index again
    assert.deepEqual(rec.ioctls(NR.VFIO_DEVICE_SET_IRQS).at(-1)!.arg, irqSet(2, 3, [a.fd.fd]));
    // An unwire of an index nothing enabled asks the kernel nothing (it would enable every vector for none).
    const before = rec.ioctls(NR.VFIO_DEVICE_SET_IRQS).length;
    await dev.setIrqs(1, 0, [null]);
    assert.equal(rec.ioctls(NR.VFIO_DEVICE_SET_IRQS).length, before);
  });
});

// The kernel asks for the device back through the REQ eventfd (vfio-pci, at an unbind), and again every 10 s
// while it waits: each is heard (one that came before anyone listened is heard at the next; the broker acts on
// the first). Not wired, the unbind waited for the broker to exit. The guest test unbinds a real device
// (unbind.test.ts). The ERR eventfd is signalled at each AER error the kernel reports of the device; the guest
// test has QEMU report them (aer.test.ts).
test('the REQ and ERR irqs are wired at open; each signal is a release-requested or error-reported event', async () => {
  await withDevice(async (dev, rec) => {
    for (const [nth, event, why] of [
      [0, 'release-requested', /the kernel asks for the device back/],
      [1, 'error-reported', /the kernel reports an uncorrectable PCIe error of the device/],
    ] as const) {
      const set = rec.argOf(NR.VFIO_DEVICE_SET_IRQS, nth);
      const efd = new DataView(set.buffer, set.byteOffset).getInt32(20, true);
      const heard: string[] = [];
      dev.on(event, (reason: string) => heard.push(reason));
      for (let i = 1; i <= 2; i++) {
        native.eventfdWrite(efd, 1n);
        await until(`${event} ${i} to be heard`, () => heard.length === i);
      }
      assert.match(heard[0]!, why);
      dev.removeAllListeners(event);
    }
  });
});

// ERR is signalled once per error: one that comes between the device's open and the broker's listening (it
// listens once its driver booted) is kept for the first listener, not lost.
test('an ERR signalled before anyone listens is heard by the first listener', async () => {
  await withDevice(async (dev, rec) => {
    const set = rec.argOf(NR.VFIO_DEVICE_SET_IRQS, 1);
    const efd = new DataView(set.buffer, set.byteOffset).getInt32(20, true);
    native.eventfdWrite(efd, 1n);
    await until('the device to read the signal', () =>
      /^eventfd-count:\s+0$/m.test(readFileSync(`/proc/self/fdinfo/${efd}`, 'utf8')),
    );
    const heard: string[] = [];
    dev.on('error-reported', (reason: string) => heard.push(reason));
    await until('the kept error to be heard', () => heard.length === 1);
    assert.match(heard[0]!, /uncorrectable PCIe error/);
  });
});

test('reset is VFIO_DEVICE_RESET with no argument', async () => {
  await withDevice(async (dev, rec) => {
    await dev.reset();
    assert.deepEqual(
      rec.ioctls(NR.VFIO_DEVICE_RESET).map((c) => [c.file, c.arg]),
      [[CDEV, 0]],
    );
  });
});

test('dma-buf: PROBE|GET of feature 11 only; mappable slices are audited (not dma-buf) and sliceFds/revokeSlice say ENOTSUP', async () => {
  for (const dmaBuf of [true, false]) {
    await withDevice(
      async (dev, rec) => {
        // struct vfio_device_feature { u32 argsz, flags }: PROBE 1<<18 | GET 1<<16 | 11
        assert.deepEqual(
          rec.ioctls(NR.VFIO_DEVICE_FEATURE).map((c) => c.arg),
          [le([4, 8], [4, (1 << 18) | (1 << 16) | 11])],
        );
        assert.equal(dev.dmaBuf, dmaBuf);
        assert.deepEqual(dev.capabilities, { mappableSlices: false, revocableSlices: false });
        assert.match(dev.path.reason, /mappable BAR slices are audited/);
        await assert.rejects(dev.sliceFds(0, [{ offset: 0n, length: 4096n }]), { code: 'ENOTSUP' });
        using some = new EventFd();
        await assert.rejects(dev.revokeSlice(some.fd), { code: 'ENOTSUP' });
        // Feature 13 (devlease's vfio-user revoke) is s390's ZPCI_ERROR in the kernel: never sent.
        const features = rec
          .ioctls(NR.VFIO_DEVICE_FEATURE)
          .map((c) => new DataView((c.arg as Uint8Array).buffer).getUint32(4, true));
        assert.ok(features.every((f) => (f & 0xffff) !== 13));
      },
      { dmaBuf },
    );
  }
});

test('device info read at open: flags, regions, irqs', async () => {
  await withDevice(async (dev, rec) => {
    // struct vfio_device_info { u32 argsz, flags, num_regions, num_irqs, cap_offset, pad }
    assert.deepEqual(rec.argOf(NR.VFIO_DEVICE_GET_INFO), le([4, 24], [4, 0], [4, 0], [4, 0], [4, 0], [4, 0]));
    assert.equal(dev.numRegions, 10);
    assert.equal(dev.numIrqs, 5);
    assert.equal(dev.flags, 0x3);
    assert.deepEqual(dev.ids, {
      vendor: 0x1234,
      device: 0x11e8,
      classCode: 0x00ff00,
      subsystemVendor: 0x1af4,
      subsystem: 0x1100,
    });
  });
});
