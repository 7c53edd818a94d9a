// Kernel backend, legacy group + type1v2 container path: the ioctl sequence
// and the argument bytes it sends, against a recorder with canned kernel
// replies. These tests check encoding and sequence only; they do not pretend
// to be the kernel. The real proof is the guest tests (npm run test:kernel).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { openKernelDevice } from '../../src/device/kernel/open.js';
import { MemFd } from '../../src/sys/memfd.js';
import { native } from '../../src/sys/native.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { le, Recorder } from './helpers/recorder.js';
import { BDF, NR, RANGES, regionOffset, scratchSysfs, standardReplies } from './helpers/replies.js';
import { shortUnmapRefused } from './helpers/short-unmap.js';

after(trackFdLeaks());

const GROUP = '/dev/vfio/7';
const CONTAINER = '/dev/vfio/vfio';
const DEVICE = `${BDF} device`;
const hex = (n: number) => `0x${n.toString(16)}`;

async function openLegacy(sysfsOpts: Parameters<typeof scratchSysfs>[0] = { cdev: false }) {
  const rec = new Recorder();
  standardReplies(rec);
  using sysfs = scratchSysfs(sysfsOpts);
  const dev = await openKernelDevice({ bdf: BDF, sys: rec, sysfsRoot: sysfs.root, log: () => {} });
  return { rec, dev };
}

test('no vfio cdev in sysfs: group status, container, API version, type1v2, set container, set IOMMU, IOMMU info, device fd', async () => {
  const { rec, dev } = await openLegacy();
  try {
    const container = rec.fdOf(CONTAINER);
    assert.deepEqual(rec.lines().slice(0, 12), [
      `open ${GROUP}`,
      `ioctl ${GROUP} ${hex(NR.VFIO_GROUP_GET_STATUS)}`,
      `open ${CONTAINER}`,
      `ioctl ${CONTAINER} ${hex(NR.VFIO_GET_API_VERSION)}`,
      `ioctl ${CONTAINER} ${hex(NR.VFIO_CHECK_EXTENSION)}`,
      `ioctl ${GROUP} ${hex(NR.VFIO_GROUP_SET_CONTAINER)}`,
      `ioctl ${CONTAINER} ${hex(NR.VFIO_SET_IOMMU)}`,
      `ioctl ${CONTAINER} ${hex(NR.VFIO_IOMMU_GET_INFO)}`,
      `ioctl ${CONTAINER} ${hex(NR.VFIO_IOMMU_GET_INFO)}`,
      `ioctl ${GROUP} ${hex(NR.VFIO_GROUP_GET_DEVICE_FD)}`,
      `ioctl ${DEVICE} ${hex(NR.VFIO_DEVICE_GET_INFO)}`,
      `ioctl ${DEVICE} ${hex(NR.VFIO_DEVICE_GET_REGION_INFO)}`,
    ]);
    // struct vfio_group_status { u32 argsz, flags }
    assert.deepEqual(rec.argOf(NR.VFIO_GROUP_GET_STATUS), le([4, 8], [4, 0]));
    const ints = (nr: number) => rec.ioctls(nr).map((c) => c.arg);
    assert.deepEqual(ints(NR.VFIO_GET_API_VERSION), [0]);
    assert.deepEqual(ints(NR.VFIO_CHECK_EXTENSION), [3], 'VFIO_TYPE1v2_IOMMU');
    assert.deepEqual(ints(NR.VFIO_SET_IOMMU), [3], 'VFIO_TYPE1v2_IOMMU');
    // VFIO_GROUP_SET_CONTAINER takes a pointer to the container's fd (an int).
    assert.deepEqual(rec.argOf(NR.VFIO_GROUP_SET_CONTAINER), le([4, container]));
    // struct vfio_iommu_type1_info { u32 argsz, flags; u64 iova_pgsizes; u32 cap_offset, pad }:
    // first 24 bytes, then again with the argsz the kernel asked for (24 + the IOVA-range capability).
    assert.deepEqual(rec.argOf(NR.VFIO_IOMMU_GET_INFO, 0), le([4, 24], [4, 0], [8, 0], [4, 0], [4, 0]));
    const second = rec.argOf(NR.VFIO_IOMMU_GET_INFO, 1);
    assert.equal(second.byteLength, 24 + 16 + 2 * 16);
    assert.deepEqual(second.subarray(0, 24), le([4, 24 + 16 + 32], [4, 0], [8, 0], [4, 0], [4, 0]));
    assert.deepEqual(dev.iovaRanges(), RANGES);
    // VFIO_GROUP_GET_DEVICE_FD takes the device's name, NUL-terminated.
    assert.equal(new TextDecoder().decode(rec.argOf(NR.VFIO_GROUP_GET_DEVICE_FD)), `${BDF}\0`);
    assert.equal(dev.transport, 'kernel-container');
    assert.match(dev.path.chosen, /kernel-container: group \/dev\/vfio\/7/);
    assert.match(dev.path.reason, /fell back to the legacy container: .*vfio-dev does not exist/);
    assert.match(dev.path.reason, /IOMMU page sizes 0x40201000/);
  } finally {
    await dev.close();
  }
});

test('a cdev but no /dev/iommu (CONFIG_IOMMUFD off): the cdev is closed again and the container is used', async () => {
  const rec = new Recorder();
  standardReplies(rec);
  rec.failOpen.set('/dev/iommu', 'ENOENT');
  using sysfs = scratchSysfs();
  const dev = await openKernelDevice({ bdf: BDF, sys: rec, sysfsRoot: sysfs.root, log: () => {} });
  try {
    assert.deepEqual(rec.lines().slice(0, 3), [
      `open /dev/vfio/devices/vfio0`,
      `open /dev/iommu`,
      `open ${GROUP}`,
    ]);
    assert.equal(dev.transport, 'kernel-container');
    assert.match(dev.path.reason, /\/dev\/iommu does not exist \(kernel without CONFIG_IOMMUFD\)/);
  } finally {
    await dev.close();
  }
});

test('DMA map by address: mmap the memfd, VFIO_IOMMU_MAP_DMA with its address; UNMAP_DMA, then munmap', async () => {
  const { rec, dev } = await openLegacy();
  using mem = MemFd.create('dma', { size: 4 * 4096 });
  try {
    const from = rec.calls.length;
    await dev.dmaMap({ fd: mem.fd, offset: 8192n, iova: 0x100_0000n, size: 8192n, read: true, write: true });
    const mmap = rec.calls.find((c) => c.op === 'mmap')!;
    assert.equal(mmap.offset, 8192n);
    assert.equal(mmap.length, 8192);
    // struct vfio_iommu_type1_dma_map { u32 argsz, flags; u64 vaddr, iova, size }; READ 1 | WRITE 2
    assert.deepEqual(
      rec.argOf(NR.VFIO_IOMMU_MAP_DMA),
      le([4, 32], [4, 3], [8, mmap.address!], [8, 0x100_0000], [8, 8192]),
    );
    await dev.dmaUnmap(0x100_0000n, 8192n);
    // struct vfio_iommu_type1_dma_unmap { u32 argsz, flags; u64 iova, size }
    assert.deepEqual(rec.argOf(NR.VFIO_IOMMU_UNMAP_DMA), le([4, 24], [4, 0], [8, 0x100_0000], [8, 8192]));
    assert.deepEqual(rec.lines(from), [
      `mmap fd ${mem.fd.fd} (rw)`,
      `ioctl ${CONTAINER} ${hex(NR.VFIO_IOMMU_MAP_DMA)}`,
      `ioctl ${CONTAINER} ${hex(NR.VFIO_IOMMU_UNMAP_DMA)}`,
      `munmap fd ${mem.fd.fd} (rw)`,
    ]);
    // A read-only mapping (the device only reads): READ alone, and a read-only mmap.
    await dev.dmaMap({ fd: mem.fd, offset: 0n, iova: 0x200_0000n, size: 4096n, read: true, write: false });
    assert.equal(new DataView(rec.argOf(NR.VFIO_IOMMU_MAP_DMA, 1).buffer).getUint32(4, true), 1);
    assert.equal(rec.calls.filter((c) => c.op === 'mmap')[1]!.file, `fd ${mem.fd.fd} (r)`);
  } finally {
    await dev.close();
  }
});

test('close: UNMAP_DMA what is left, close the device fd, then the group and the container', async () => {
  const { rec, dev } = await openLegacy();
  using mem = MemFd.create('dma', { size: 4096 });
  await dev.dmaMap({ fd: mem.fd, offset: 0n, iova: 0x100_0000n, size: 4096n, read: true, write: true });
  const fds = [rec.fdOf(DEVICE), rec.fdOf(GROUP), rec.fdOf(CONTAINER)];
  const from = rec.calls.length;
  {
    using _closes = rec.recordCloses();
    await dev.close();
  }
  // The device fd first, then the group (closing it takes it out of the container), then the container.
  assert.deepEqual(rec.lines(from), [
    `ioctl ${CONTAINER} ${hex(NR.VFIO_IOMMU_UNMAP_DMA)}`,
    `munmap fd ${mem.fd.fd} (rw)`,
    `close ${DEVICE}`,
    `close ${GROUP}`,
    `close ${CONTAINER}`,
  ]);
  for (const fd of fds) assert.throws(() => native.fstat(fd), { code: 'EBADF' });
});

test('a group that is not viable is refused with EBUSY, and nothing stays open', async () => {
  const rec = new Recorder();
  standardReplies(rec);
  rec.replies.set(NR.VFIO_GROUP_GET_STATUS, () => 0); // flags 0: not viable
  using sysfs = scratchSysfs({ cdev: false });
  await assert.rejects(
    openKernelDevice({ bdf: BDF, sys: rec, sysfsRoot: sysfs.root, log: () => {} }),
    (err: Error & { code?: string }) =>
      err.code === 'EBUSY' && /every device in the IOMMU group/.test(err.message),
  );
  assert.throws(() => native.fstat(rec.fdOf(GROUP)), { code: 'EBADF' });
});

test('no type1v2 IOMMU in the container: ENOTSUP naming it', async () => {
  const rec = new Recorder();
  standardReplies(rec);
  rec.replies.set(NR.VFIO_CHECK_EXTENSION, () => 0);
  using sysfs = scratchSysfs({ cdev: false });
  await assert.rejects(
    openKernelDevice({ bdf: BDF, sys: rec, sysfsRoot: sysfs.root, log: () => {} }),
    (err: Error & { code?: string }) => err.code === 'ENOTSUP' && /type1v2/.test(err.message),
  );
});

test('sysfs problems are named before any device node is opened', async () => {
  const rec = new Recorder();
  standardReplies(rec);
  {
    using sysfs = scratchSysfs({ driver: 'edu' });
    await assert.rejects(
      openKernelDevice({ bdf: BDF, sys: rec, sysfsRoot: sysfs.root, log: () => {} }),
      (err: Error & { code?: string }) =>
        err.code === 'ENODEV' && /bound to 'edu', not to vfio-pci/.test(err.message),
    );
  }
  {
    using sysfs = scratchSysfs({ cdev: false, group: null });
    await assert.rejects(
      openKernelDevice({ bdf: BDF, sys: rec, sysfsRoot: sysfs.root, log: () => {} }),
      (err: Error & { code?: string }) => err.code === 'ENODEV' && /no IOMMU group/.test(err.message),
    );
  }
  {
    using sysfs = scratchSysfs();
    await assert.rejects(
      openKernelDevice({ bdf: '0000:00:05.0', sys: rec, sysfsRoot: sysfs.root, log: () => {} }),
      { code: 'ENODEV' },
    );
  }
  await assert.rejects(openKernelDevice({ bdf: 'edu', sys: rec, log: () => {} }), { code: 'EINVAL' });
  assert.equal(rec.calls.length, 0);
});

test('a short BDF gets domain 0000; the device reads config space at the config region offset', async () => {
  const rec = new Recorder();
  standardReplies(rec);
  using sysfs = scratchSysfs({ cdev: false });
  const dev = await openKernelDevice({ bdf: '00:04.0', sys: rec, sysfsRoot: sysfs.root, log: () => {} });
  try {
    assert.equal(new TextDecoder().decode(rec.argOf(NR.VFIO_GROUP_GET_DEVICE_FD)), `${BDF}\0`);
    assert.ok(rec.lines().includes(`pread ${DEVICE} 0x${regionOffset(7).toString(16)}`));
  } finally {
    await dev.close();
  }
});

// type1 writes back how much it unmapped, and answers success with less for mappings it skips (before Linux
// 6.0, those another process's mm made: a broker's maps after an upgrade). Taken as done, the lease's memory
// was released while the IOMMU still reached it.
test('an UNMAP_DMA the kernel answers with fewer bytes than are mapped there is an error; the mapping is kept', async () => {
  const { rec, dev } = await openLegacy();
  try {
    // struct vfio_iommu_type1_dma_unmap { u32 argsz, flags; u64 iova, size }: size written back as 0.
    await shortUnmapRefused(rec, dev, {
      request: NR.VFIO_IOMMU_UNMAP_DMA,
      offset: 16,
      unmapped: 0n,
      what: 'VFIO_IOMMU_UNMAP_DMA',
      kept: (gone) =>
        assert.equal(
          rec.calls.filter((c) => c.op === 'munmap').length,
          gone ? 1 : 0,
          gone ? 'unmapped once the kernel did' : 'the pinned memory stays mapped',
        ),
    });
  } finally {
    await dev.close();
  }
});
