// Kernel backend, iommufd + vfio cdev path: the ioctl sequence and the
// argument bytes it sends, against a recorder with canned kernel replies.
// These tests check encoding and sequence only; they do not pretend to be
// the kernel. The behaviour against a real kernel is proven by the guest
// tests (test/kernel/guest/edu.guest.ts, npm run test:kernel).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { KernelDevice } from '../../src/device/kernel/device.js';
import { openKernelDevice } from '../../src/device/kernel/open.js';
import { Fd } from '../../src/sys/fd.js';
import { MemFd } from '../../src/sys/memfd.js';
import { native } from '../../src/sys/native.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { kernelError, le, Recorder } from './helpers/recorder.js';
import { BDF, IOAS_ID, NR, RANGES, regionOffset, scratchSysfs, standardReplies } from './helpers/replies.js';
import { shortUnmapRefused } from './helpers/short-unmap.js';

after(trackFdLeaks());

const CDEV = '/dev/vfio/devices/vfio0';
const IOMMU = '/dev/iommu';
const hex = (n: number) => `0x${n.toString(16)}`;

async function openIommufd(opts: { mapFile?: boolean } = {}) {
  const rec = new Recorder();
  standardReplies(rec, opts);
  using sysfs = scratchSysfs();
  const logs: string[] = [];
  const dev = await openKernelDevice({ bdf: BDF, sys: rec, sysfsRoot: sysfs.root, log: (m) => logs.push(m) });
  return { rec, dev, logs };
}

test('by PCI address: opens the cdev and /dev/iommu, binds, allocates an IOAS, attaches, reads IOVA ranges, probes MAP_FILE', async () => {
  const { rec, dev, logs } = await openIommufd();
  try {
    assert.ok(dev instanceof KernelDevice);
    const iommufd = rec.fdOf(IOMMU);
    assert.deepEqual(rec.lines().slice(0, 9), [
      `open ${CDEV}`,
      `open ${IOMMU}`,
      `ioctl ${CDEV} ${hex(NR.VFIO_DEVICE_BIND_IOMMUFD)}`,
      `ioctl ${IOMMU} ${hex(NR.IOMMU_IOAS_ALLOC)}`,
      `ioctl ${CDEV} ${hex(NR.VFIO_DEVICE_ATTACH_IOMMUFD_PT)}`,
      `ioctl ${IOMMU} ${hex(NR.IOMMU_IOAS_IOVA_RANGES)}`,
      'scratch scratch',
      `ioctl ${IOMMU} ${hex(NR.IOMMU_IOAS_IOVA_RANGES)}`,
      'munmap scratch',
    ]);
    // struct vfio_device_bind_iommufd { u32 argsz, flags; s32 iommufd; u32 out_devid; u64 token_uuid_ptr }
    assert.deepEqual(
      rec.argOf(NR.VFIO_DEVICE_BIND_IOMMUFD),
      le([4, 24], [4, 0], [4, iommufd], [4, 0], [8, 0]),
    );
    // struct iommu_ioas_alloc { u32 size, flags, out_ioas_id }
    assert.deepEqual(rec.argOf(NR.IOMMU_IOAS_ALLOC), le([4, 12], [4, 0], [4, 0]));
    // struct vfio_device_attach_iommufd_pt { u32 argsz, flags, pt_id, pasid }
    assert.deepEqual(rec.argOf(NR.VFIO_DEVICE_ATTACH_IOMMUFD_PT), le([4, 16], [4, 0], [4, IOAS_ID], [4, 0]));
    // struct iommu_ioas_iova_ranges { u32 size, ioas_id, num_iovas, __reserved; u64 allowed_iovas, out_iova_alignment }
    // first with room for none (the kernel answers EMSGSIZE and the count), then with a buffer for two
    const scratch = rec.calls.find((c) => c.op === 'scratch')!;
    assert.equal(scratch.length, 2 * 16);
    assert.deepEqual(
      rec.argOf(NR.IOMMU_IOAS_IOVA_RANGES, 0),
      le([4, 32], [4, IOAS_ID], [4, 0], [4, 0], [8, 0], [8, 0]),
    );
    assert.deepEqual(
      rec.argOf(NR.IOMMU_IOAS_IOVA_RANGES, 1),
      le([4, 32], [4, IOAS_ID], [4, 2], [4, 0], [8, scratch.address!], [8, 0]),
    );
    assert.deepEqual(dev.iovaRanges(), RANGES);
    // MAP_FILE probe: struct iommu_ioas_map_file { u32 size, flags, ioas_id; s32 fd; u64 start, length, iova }
    // with fd -1 and one page, READABLE: EBADF means the call exists.
    assert.deepEqual(
      rec.argOf(NR.IOMMU_IOAS_MAP_FILE),
      le([4, 40], [4, 1 << 2], [4, IOAS_ID], [4, -1], [8, 0], [8, 4096], [8, 0]),
    );
    // Then the device itself: info, config space ids, the command register's decode bits (bar-restore.ts), the
    // dma-buf probe, the REQ and ERR irqs wired (device-signals.ts).
    assert.deepEqual(rec.lines(9), [
      `ioctl ${IOMMU} ${hex(NR.IOMMU_IOAS_MAP_FILE)}`,
      `ioctl ${CDEV} ${hex(NR.VFIO_DEVICE_GET_INFO)}`,
      `ioctl ${CDEV} ${hex(NR.VFIO_DEVICE_GET_REGION_INFO)}`,
      `pread ${CDEV} 0x${regionOffset(7).toString(16)}`,
      `pread ${CDEV} 0x${(regionOffset(7) + 4n).toString(16)}`,
      `ioctl ${CDEV} ${hex(NR.VFIO_DEVICE_FEATURE)}`,
      `ioctl ${CDEV} ${hex(NR.VFIO_DEVICE_GET_IRQ_INFO)}`,
      `ioctl ${CDEV} ${hex(NR.VFIO_DEVICE_SET_IRQS)}`,
      `ioctl ${CDEV} ${hex(NR.VFIO_DEVICE_GET_IRQ_INFO)}`,
      `ioctl ${CDEV} ${hex(NR.VFIO_DEVICE_SET_IRQS)}`,
      // ERR wired: the status register says whether there is a capability list to find PCIe's in (none here).
      `pread ${CDEV} 0x${(regionOffset(7) + 6n).toString(16)}`,
    ]);
    assert.equal(dev.transport, 'kernel-iommufd');
    assert.equal(dev.ids.vendor, 0x1234);
    assert.equal(dev.ids.device, 0x11e8);
    assert.match(dev.path.chosen, /^kernel-iommufd: \/dev\/vfio\/devices\/vfio0 bound to \/dev\/iommu/);
    assert.match(dev.path.reason, /iommufd \+ vfio cdev preferred/);
    assert.match(dev.path.reason, /IOMMU_IOAS_MAP_FILE/);
    assert.equal(logs.length, 1, 'the chosen path is logged once');
    assert.match(logs[0]!, /kernel-iommufd/);
  } finally {
    await dev.close();
  }
});

test('maps a memfd by file (IOMMU_IOAS_MAP_FILE) and unmaps it with IOMMU_IOAS_UNMAP', async () => {
  const { rec, dev } = await openIommufd();
  using mem = MemFd.create('dma', { size: 3 * 4096 });
  try {
    const from = rec.calls.length;
    await dev.dmaMap({ fd: mem.fd, offset: 4096n, iova: 0x100_0000n, size: 8192n, read: true, write: true });
    await dev.dmaMap({ fd: mem.fd, offset: 0n, iova: 0x200_0000n, size: 4096n, read: true, write: false });
    await dev.dmaUnmap(0x100_0000n, 8192n);
    assert.deepEqual(rec.lines(from), [
      `ioctl ${IOMMU} ${hex(NR.IOMMU_IOAS_MAP_FILE)}`,
      `ioctl ${IOMMU} ${hex(NR.IOMMU_IOAS_MAP_FILE)}`,
      `ioctl ${IOMMU} ${hex(NR.IOMMU_IOAS_UNMAP)}`,
    ]);
    const FIXED = 1;
    const W = 2;
    const R = 4;
    assert.deepEqual(
      rec.argOf(NR.IOMMU_IOAS_MAP_FILE, 1),
      le([4, 40], [4, FIXED | W | R], [4, IOAS_ID], [4, mem.fd.fd], [8, 4096], [8, 8192], [8, 0x100_0000]),
    );
    assert.deepEqual(
      rec.argOf(NR.IOMMU_IOAS_MAP_FILE, 2),
      le([4, 40], [4, FIXED | R], [4, IOAS_ID], [4, mem.fd.fd], [8, 0], [8, 4096], [8, 0x200_0000]),
    );
    // struct iommu_ioas_unmap { u32 size, ioas_id; u64 iova, length }
    assert.deepEqual(rec.argOf(NR.IOMMU_IOAS_UNMAP), le([4, 24], [4, IOAS_ID], [8, 0x100_0000], [8, 8192]));
    assert.equal(rec.calls.filter((c) => c.op === 'mmap').length, 0, 'mapping by file needs no mmap');
  } finally {
    await dev.close();
  }
});

test('without IOMMU_IOAS_MAP_FILE: mmaps the memfd, maps by address, and keeps the mmap until the IOVA is unmapped', async () => {
  const { rec, dev } = await openIommufd({ mapFile: false });
  using mem = MemFd.create('dma', { size: 2 * 4096 });
  try {
    assert.match(dev.path.reason, /mapped by address/);
    const from = rec.calls.length;
    await dev.dmaMap({ fd: mem.fd, offset: 4096n, iova: 0x100_0000n, size: 4096n, read: true, write: true });
    const mmap = rec.calls.find((c) => c.op === 'mmap')!;
    assert.equal(mmap.offset, 4096n);
    assert.equal(mmap.length, 4096);
    // struct iommu_ioas_map { u32 size, flags, ioas_id, __reserved; u64 user_va, length, iova }
    assert.deepEqual(
      rec.argOf(NR.IOMMU_IOAS_MAP),
      le([4, 40], [4, 7], [4, IOAS_ID], [4, 0], [8, mmap.address!], [8, 4096], [8, 0x100_0000]),
    );
    await dev.dmaUnmap(0x100_0000n, 4096n);
    assert.deepEqual(rec.lines(from), [
      `mmap fd ${mem.fd.fd} (rw)`,
      `ioctl ${IOMMU} ${hex(NR.IOMMU_IOAS_MAP)}`,
      `ioctl ${IOMMU} ${hex(NR.IOMMU_IOAS_UNMAP)}`,
      `munmap fd ${mem.fd.fd} (rw)`,
    ]);
  } finally {
    await dev.close();
  }
});

test('a refused map leaves no mmap behind', async () => {
  const { rec, dev } = await openIommufd({ mapFile: false });
  using mem = MemFd.create('dma', { size: 4096 });
  try {
    rec.replies.set(NR.IOMMU_IOAS_MAP, () => {
      throw kernelError('EINVAL');
    });
    await assert.rejects(
      dev.dmaMap({ fd: mem.fd, offset: 0n, iova: 0xfee0_0000n, size: 4096n, read: true, write: true }),
      (err: Error & { code?: string }) =>
        err.code === 'EINVAL' && /IOMMU_IOAS_MAP of iova 0xfee00000/.test(err.message),
    );
    assert.deepEqual(
      rec.lines().filter((l) => l.includes(`fd ${mem.fd.fd}`)),
      [`mmap fd ${mem.fd.fd} (rw)`, `munmap fd ${mem.fd.fd} (rw)`],
    );
  } finally {
    await dev.close();
  }
});

test('close: unmaps what is still mapped, detaches, closes the device fd, destroys the IOAS, closes the iommufd', async () => {
  const { rec, dev } = await openIommufd();
  using mem = MemFd.create('dma', { size: 4096 });
  await dev.dmaMap({ fd: mem.fd, offset: 0n, iova: 0x100_0000n, size: 4096n, read: true, write: true });
  const cdevFd = rec.fdOf(CDEV);
  const iommuFd = rec.fdOf(IOMMU);
  let closed = 0;
  dev.on('close', () => closed++);
  const from = rec.calls.length;
  {
    using _closes = rec.recordCloses();
    await dev.close();
    await dev.close(); // idempotent
  }
  assert.equal(closed, 1);
  // The device fd is closed before IOMMU_DESTROY (iommufd.ts: closed or detached first), the iommufd last.
  assert.deepEqual(rec.lines(from), [
    `ioctl ${IOMMU} ${hex(NR.IOMMU_IOAS_UNMAP)}`,
    `ioctl ${CDEV} ${hex(NR.VFIO_DEVICE_DETACH_IOMMUFD_PT)}`,
    `close ${CDEV}`,
    `ioctl ${IOMMU} ${hex(NR.IOMMU_DESTROY)}`,
    `close ${IOMMU}`,
  ]);
  // struct vfio_device_detach_iommufd_pt { u32 argsz, flags, pasid }; struct iommu_destroy { u32 size, id }
  assert.deepEqual(rec.argOf(NR.VFIO_DEVICE_DETACH_IOMMUFD_PT), le([4, 12], [4, 0], [4, 0]));
  assert.deepEqual(rec.argOf(NR.IOMMU_DESTROY), le([4, 8], [4, IOAS_ID]));
  // Both descriptors are really closed (the fd-leak check of this file counts them too).
  assert.throws(() => native.fstat(cdevFd), { code: 'EBADF' });
  assert.throws(() => native.fstat(iommuFd), { code: 'EBADF' });
  await assert.rejects(dev.read32(0, 0), { code: 'ERR_DEVLEASE_CLOSED' });
  await assert.rejects(
    dev.dmaMap({ fd: mem.fd, offset: 0n, iova: 0n, size: 4096n, read: true, write: true }),
    { code: 'ERR_DEVLEASE_CLOSED' },
  );
});

test('device and iommufd fds passed in (--device-fd / --iommufd-fd): nothing is opened, the passed fds are bound and owned', async () => {
  const rec = new Recorder();
  standardReplies(rec);
  const deviceFd = new Fd(rec.newFd(CDEV));
  const iommufd = new Fd(rec.newFd(IOMMU));
  const iommufdNumber = iommufd.fd;
  const dev = await openKernelDevice({ deviceFd, iommufdFd: iommufd, sys: rec, log: () => {} });
  try {
    assert.equal(rec.calls.filter((c) => c.op === 'open').length, 0);
    assert.deepEqual(
      rec.argOf(NR.VFIO_DEVICE_BIND_IOMMUFD),
      le([4, 24], [4, 0], [4, iommufdNumber], [4, 0], [8, 0]),
    );
    assert.equal(dev.transport, 'kernel-iommufd');
    assert.match(dev.path.reason, /passed in by a launcher/);
  } finally {
    await dev.close();
  }
  assert.ok(deviceFd.closed && iommufd.closed, 'the device owned the passed fds and closed them');
});

test('a failed attach closes the cdev and the iommufd and falls back to the container, saying why', async () => {
  const rec = new Recorder();
  standardReplies(rec);
  rec.replies.set(NR.VFIO_DEVICE_ATTACH_IOMMUFD_PT, () => {
    throw kernelError('EPERM');
  });
  using sysfs = scratchSysfs();
  const dev = await openKernelDevice({ bdf: BDF, sys: rec, sysfsRoot: sysfs.root, log: () => {} });
  try {
    assert.equal(dev.transport, 'kernel-container');
    assert.match(
      dev.path.reason,
      /fell back to the legacy container: .*VFIO_DEVICE_ATTACH_IOMMUFD_PT .*EPERM/,
    );
    // The IOAS allocated before the failure is destroyed.
    assert.deepEqual(rec.argOf(NR.IOMMU_DESTROY), le([4, 8], [4, IOAS_ID]));
  } finally {
    await dev.close();
  }
});

test("path: 'iommufd' refuses to fall back", async () => {
  const rec = new Recorder();
  standardReplies(rec);
  rec.failOpen.set(IOMMU, 'ENOENT');
  using sysfs = scratchSysfs();
  await assert.rejects(
    openKernelDevice({ bdf: BDF, sys: rec, sysfsRoot: sysfs.root, path: 'iommufd', log: () => {} }),
    (err: Error & { code?: string }) => err.code === 'ENOENT' && /CONFIG_IOMMUFD/.test(err.message),
  );
  assert.equal(rec.calls.filter((c) => c.op === 'ioctl').length, 0);
});

test('an IOMMU_IOAS_UNMAP the kernel answers with fewer bytes than are mapped there is an error; the mapping is kept', async () => {
  const { rec, dev } = await openIommufd();
  try {
    // struct iommu_ioas_unmap { u32 size, ioas_id; u64 iova, length }: length written back as one page.
    await shortUnmapRefused(rec, dev, {
      request: NR.IOMMU_IOAS_UNMAP,
      offset: 16,
      unmapped: 4096n,
      what: 'IOMMU_IOAS_UNMAP',
    });
  } finally {
    await dev.close();
  }
});
