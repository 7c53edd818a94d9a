// Which files may back a lease's DMA maps (policy.dma_files). By default only memory: a memfd, or a file on
// tmpfs or hugetlbfs. Any other file's pages come from its file system when the device touches them, and a
// file system the client serves itself (FUSE, mountable by any local user through fusermount3) could stall the
// device's accesses, for every lease, or the broker's own look at the fd. The broker's check reads the
// kernel's cached attributes only: a FUSE server that holds GETATTR answers holds nothing of the broker.
import assert from 'node:assert/strict';
import {
  closeSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statfsSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { connect } from '../../src/client/lease.js';
import { F_SEAL_FUTURE_WRITE, F_SEAL_WRITE } from '../../src/sys/constants.js';
import { Fd } from '../../src/sys/fd.js';
import { MemFd } from '../../src/sys/index.js';
import { VFIO_USER_F_DMA_REGION_READ, VFIO_USER_F_DMA_REGION_WRITE } from '../../src/vfio/user/protocol.js';
import { type FlushFailingFs, mountFlushFailingFs } from '../fixtures/sys/fuse-flush-eio.js';
import { startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const RW = VFIO_USER_F_DMA_REGION_READ | VFIO_USER_F_DMA_REGION_WRITE;
const leakCheck = trackFdLeaks();
let dir: string;
let diskFile: string;
let shmFile: string;
let fuse: FlushFailingFs;
const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;

/** A directory on a file system that is not memory (a disk's): where /tmp is tmpfs, /var/tmp or this checkout. */
function diskDir(): string {
  const tried = [tmpdir(), '/var/tmp', process.cwd()];
  for (const d of tried) {
    const { type } = statfsSync(d);
    if (type !== TMPFS_MAGIC && type !== RAMFS_MAGIC) return d;
  }
  throw new Error(`this test needs a directory on a disk file system: ${tried.join(', ')} are all tmpfs`);
}

/** A block device this process can open read-only (a loop device or the machine's disk): only looked at. */
function blockDevice(): string {
  for (const name of readdirSync('/dev')) {
    const path = `/dev/${name}`;
    try {
      if (!statSync(path).isBlockDevice()) continue;
      closeSync(openSync(path, 'r'));
      return path;
    } catch {
      // gone meanwhile, or no medium (an empty CD drive)
    }
  }
  throw new Error('this test needs a block device node in /dev (a loop device or a disk)');
}

before(async () => {
  // /dev/shm is tmpfs; the other file is on a disk, as /var or a home directory is.
  dir = mkdtempSync(join(diskDir(), 'devlease-dma-files-'));
  diskFile = join(dir, 'dma');
  writeFileSync(diskFile, Buffer.alloc(8192));
  shmFile = `/dev/shm/devlease-dma-files-${process.pid}`;
  writeFileSync(shmFile, Buffer.alloc(8192));
  fuse = await mountFlushFailingFs();
});
after(async () => {
  await fuse.unmount();
  rmSync(dir, { recursive: true, force: true });
  rmSync(shmFile, { force: true });
  await leakCheck();
});

test('by default a DMA_MAP of a file that is not memory is refused, naming its file system; a memfd and a tmpfs file map', async () => {
  const rig = await startRig();
  const lease = await connect({ socket: rig.socket });
  const disk = new Fd(openSync(diskFile, 'r+'));
  const shm = new Fd(openSync(shmFile, 'r+'));
  try {
    const base = lease.info.iovaWindow!.base;
    const err = await lease.client
      .dmaMap({ fd: disk, iova: base, size: 4096, flags: RW, offset: 0 })
      .then(() => assert.fail('a disk file was mapped'))
      .catch((e) => e);
    assert.equal(err.code, 'EPERM', err.message);
    const mounts = readFileSync('/proc/self/mounts', 'utf8'); // the message must name one of them
    assert.match(err.reason, /the DMA_MAP fd is a file on (\S+) \(mounted at \/[^)]*\), not memory/);
    const named = /a file on (\S+) \(mounted at ([^)]*)\)/.exec(err.reason)!;
    assert.ok(
      mounts.split('\n').some((l) => l.split(' ')[1] === named[2] && l.split(' ')[2] === named[1]),
      `${named[1]} mounted at ${named[2]} is one of our mounts`,
    );
    assert.notEqual(named[1], 'tmpfs');
    assert.match(err.reason, /policy\.dma_files = "memory"/);
    // A block device neither (a loop device's pages may come from any file).
    const blk = new Fd(openSync(blockDevice(), 'r'));
    try {
      const e = await lease.client
        .dmaMap({ fd: blk, iova: base, size: 4096, flags: VFIO_USER_F_DMA_REGION_READ })
        .then(() => assert.fail('a block device was mapped'))
        .catch((x) => x);
      assert.equal(e.code, 'EPERM', e.message);
      assert.match(e.reason, /the DMA_MAP fd is a block device, not memory/);
    } finally {
      blk.close();
    }
    assert.equal((await rig.sim.stats()).dmaMaps, 0, 'the device was never asked');
    assert.equal(rig.broker.leases.get(lease.info.lease)!.mappings.size, 0);
    // Memory maps, as before: a memfd, and a file on tmpfs (QEMU's memory-backend-file on /dev/shm).
    using mem = MemFd.create('dma', { size: 4096 });
    await lease.client.dmaMap({ fd: mem.fd, iova: base, size: 4096, flags: RW });
    await lease.client.dmaMap({ fd: shm, iova: base + 4096n, size: 4096, flags: RW, offset: 4096 });
    assert.equal(rig.broker.leases.get(lease.info.lease)!.mappings.size, 2);
    await lease.client.dmaUnmap({ iova: base, size: 8192 });
  } finally {
    disk.close();
    shm.close();
    lease.close();
    await rig.close();
  }
});

// mmap refuses a shared writable map of a memfd sealed against writing, but IOMMU_IOAS_MAP_FILE (the kernel
// backend's iommufd path, where nothing is mmapped) does not check the seals on every kernel: refused at the
// edge, on every backend, for either seal. A read-only map of the same memfd is memory like any other.
test('a memfd sealed against writing maps for the device to read, never to write', async () => {
  const rig = await startRig({ config: { policy: { dma_files: 'any' } } });
  const lease = await connect({ socket: rig.socket });
  try {
    const base = lease.info.iovaWindow!.base;
    for (const seal of [F_SEAL_WRITE, F_SEAL_FUTURE_WRITE]) {
      using mem = MemFd.create('sealed', { size: 4096, sealing: true });
      mem.addSeals(seal);
      const err = await lease.client
        .dmaMap({ fd: mem.fd, iova: base, size: 4096, flags: RW })
        .then(() =>
          assert.fail(`a memfd sealed with 0x${seal.toString(16)} was mapped for the device to write`),
        )
        .catch((e) => e);
      assert.equal(err.code, 'EPERM', err.message);
      assert.match(err.reason, /sealed against writing/);
      assert.equal((await rig.sim.stats()).dmaMaps, 0, 'the device was never asked');
      await lease.client.dmaMap({ fd: mem.fd, iova: base, size: 4096, flags: VFIO_USER_F_DMA_REGION_READ });
      await lease.client.dmaUnmap({ iova: base, size: 4096 });
    }
  } finally {
    lease.close();
    await rig.close();
  }
});

test('with policy.dma_files = "any" a file on disk maps; any other value stops the broker at start, naming the field', async () => {
  const rig = await startRig({ config: { policy: { dma_files: 'any' } } });
  const lease = await connect({ socket: rig.socket });
  const disk = new Fd(openSync(diskFile, 'r+'));
  try {
    const base = lease.info.iovaWindow!.base;
    await lease.client.dmaMap({ fd: disk, iova: base, size: 8192, flags: RW });
    assert.equal((await rig.sim.stats()).dmaMaps, 1, 'the device mapped it');
    await lease.client.dmaUnmap({ iova: base, size: 8192 });
  } finally {
    disk.close();
    lease.close();
    await rig.close();
  }
  await assert.rejects(startRig({ config: { policy: { dma_files: 'files' } } }), {
    message: /policy\.dma_files: must be "memory" or "any" \(got "files"\)/,
  });
});

test("a FUSE file whose server holds GETATTR: the broker refuses the map at once, without asking the client's file system", async () => {
  const rig = await startRig();
  const lease = await connect({ socket: rig.socket });
  const file = new Fd(openSync(fuse.file, 'r+'));
  try {
    const base = lease.info.iovaWindow!.base;
    // From now on every GETATTR of the file waits (up to the fixture's 3 s): an fstat(2) of it would too.
    fuse.holdGetattr();
    const asked = fuse.getattrs();
    const err = await lease.client
      .dmaMap({ fd: file, iova: base, size: 4096, flags: RW })
      .then(() => assert.fail('a FUSE file was mapped'))
      .catch((e) => e);
    assert.equal(err.code, 'EPERM', err.message);
    assert.match(
      err.reason,
      /the DMA_MAP fd is a file on fuse \(mounted at [^)]*devlease-fuse-[^)]*\), not memory/,
    );
    assert.equal(fuse.getattrs(), asked, 'the broker did not ask the FUSE server for the attributes');
    // The lease goes on: a memfd maps.
    using mem = MemFd.create('dma', { size: 4096 });
    await lease.client.dmaMap({ fd: mem.fd, iova: base, size: 4096, flags: RW });
    await lease.client.dmaUnmap({ iova: base, size: 4096 });
  } finally {
    fuse.release();
    file.close(); // our own: its FLUSH is answered (EIO) now...
    lease.close();
    await rig.close();
  }
});

test('a reload that sets policy.dma_files applies to the maps made after it', async () => {
  const file = join(dir, 'broker.toml');
  writeFileSync(file, '[policy]\ndma_files = "any"\n');
  const rig = await startRig({ configFile: file });
  const lease = await connect({ socket: rig.socket });
  const disk = new Fd(openSync(diskFile, 'r+'));
  try {
    const base = lease.info.iovaWindow!.base;
    await lease.client.dmaMap({ fd: disk, iova: base, size: 4096, flags: RW });
    writeFileSync(file, '[policy]\ndma_files = "memory"\n');
    await rig.broker.reload();
    const err = await lease.client
      .dmaMap({ fd: disk, iova: base + 4096n, size: 4096, flags: RW })
      .then(() => assert.fail('mapped after the reload'))
      .catch((e) => e);
    assert.equal(err.code, 'EPERM', err.message);
    assert.equal(rig.broker.leases.get(lease.info.lease)!.mappings.size, 1, 'the map made before it stays');
    await lease.client.dmaUnmap({ iova: base, size: 4096 });
  } finally {
    disk.close();
    lease.close();
    await rig.close();
  }
});
