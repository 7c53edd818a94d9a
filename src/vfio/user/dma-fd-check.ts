// What can be told about a DMA_MAP fd before mapping it: the broker checks a
// client's fd at the edge, and the SA-1 simulator checks every fd its owner
// maps (datasheet rev 2 §7), with the same answers. A pipe, socket or
// directory is no memory at all (EBADF); a regular file (memfd, shm, file)
// must hold [offset, offset + size) (EINVAL: a 0-byte memfd or an offset past
// its end); a description opened without the access the map asks for cannot
// be mapped that way (EACCES). Anything else (a dma-buf, a device node) goes
// on to mmap, which decides.
//
// The attributes are the kernel's cached ones (statx AT_STATX_DONT_SYNC): a
// file system served by a peer — a FUSE server the client runs — is never
// asked, so a server that does not answer cannot hold the checker's thread.
// With `files: 'memory'` (the broker's default, policy.dma_files) a regular
// file must also be memory: a memfd, or a file on tmpfs or hugetlbfs (those
// answer F_GET_SEALS). Any other file's pages come from its file system when
// the device touches them, and one served by the client could stall the
// device's accesses for every lease; it is refused (EPERM), naming the file
// system. So is a block device (a loop device may be backed by such a file).

import { VfioError } from '../../errors.js';
import { F_SEAL_FUTURE_WRITE, F_SEAL_WRITE } from '../../sys/constants.js';
import { native } from '../../sys/native.js';
import { readHead } from '../../sys/read-head.js';

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFIFO = 0o010000;
const S_IFSOCK = 0o140000;
const S_IFDIR = 0o040000;
const S_IFBLK = 0o060000;
const NOT_MEMORY = new Map([
  [S_IFIFO, 'a pipe'],
  [S_IFSOCK, 'a socket'],
  [S_IFDIR, 'a directory'],
]);
const SEALED_AGAINST_WRITING = F_SEAL_WRITE | F_SEAL_FUTURE_WRITE;
const O_ACCMODE = 0o3;
const O_RDONLY = 0o0;
const O_WRONLY = 0o1;

/** Which regular files may back a DMA map: only memory (memfd, tmpfs, hugetlbfs), or any. */
export type DmaFiles = 'memory' | 'any';

/**
 * `fd`: an Fd or a process-wide fd number (the simulator's device worker has numbers). `pid`: the process that
 * sent it, whose mounts name a refused file's file system (the broker may run in a mount namespace of its own).
 */
export function checkDmaFd(
  fdOrNumber: { fd: number } | number,
  m: { offset: bigint; size: bigint; write: boolean },
  files: DmaFiles = 'any',
  pid?: number,
): void {
  const fd = typeof fdOrNumber === 'number' ? fdOrNumber : fdOrNumber.fd;
  const st = native.statCached(fd);
  const type = st.mode & S_IFMT;
  const kind = NOT_MEMORY.get(type);
  if (kind) {
    throw new VfioError('EBADF', `the DMA_MAP fd is ${kind}, not memory: map a memfd, shm or file`);
  }
  if (files === 'memory' && type === S_IFBLK) {
    throw new VfioError(
      'EPERM',
      'the DMA_MAP fd is a block device, not memory: this broker maps a memfd or a file on tmpfs or hugetlbfs (policy.dma_files = "memory")',
    );
  }
  if (type === S_IFREG) {
    const seals = sealsOf(fd);
    if (files === 'memory' && seals === null) {
      throw new VfioError(
        'EPERM',
        `the DMA_MAP fd is a file on ${fileSystemOf(st.mntId, pid)}, not memory: this broker maps a memfd or a file on tmpfs or hugetlbfs (policy.dma_files = "memory")`,
      );
    }
    // A memfd sealed against writing: mmap refuses a shared writable map of it, but IOMMU_IOAS_MAP_FILE
    // (the iommufd path: no mmap) does not check the seals on every kernel that has it, and the device could
    // write memory its creator sealed. Refused here, on every path alike.
    if (m.write && seals !== null && (seals & SEALED_AGAINST_WRITING) !== 0) {
      throw new VfioError(
        'EPERM',
        'the DMA_MAP fd is sealed against writing (F_SEAL_WRITE or F_SEAL_FUTURE_WRITE), but the map lets the device write',
      );
    }
    const fileSize = BigInt(st.size);
    if (fileSize === 0n) throw new VfioError('EINVAL', 'the DMA_MAP fd is an empty file (0 bytes)');
    if (m.offset + m.size > fileSize) {
      throw new VfioError(
        'EINVAL',
        `the DMA_MAP range [offset 0x${m.offset.toString(16)}, +0x${m.size.toString(16)}) reaches past the end of its fd (0x${fileSize.toString(16)} bytes)`,
      );
    }
  }
  const mode = accessMode(fd);
  // mmap needs a readable description whatever the protection; DMA_WRITE (the device writes the memory)
  // needs a writable one too.
  if (mode === O_WRONLY)
    throw new VfioError(
      'EACCES',
      'the DMA_MAP fd is open write-only: memory is mapped through a readable fd',
    );
  if (mode === O_RDONLY && m.write) {
    throw new VfioError('EACCES', 'the DMA_MAP fd is open read-only, but the map lets the device write');
  }
}

/** The description's O_ACCMODE (fcntl F_GETFL: no /proc read on each DMA_MAP); null when it cannot be read. */
function accessMode(fd: number): number | null {
  try {
    return native.statusFlags(fd) & O_ACCMODE;
  } catch {
    return null;
  }
}

/**
 * The file's seals, or null when it is not memory: memfd, tmpfs (shmem) and hugetlbfs files answer F_GET_SEALS;
 * no other file does (EINVAL), nor asks its file system.
 */
function sealsOf(fd: number): number | null {
  try {
    return native.getSeals(fd);
  } catch (err) {
    if ((err as { code?: string }).code === 'EINVAL') return null;
    throw err; // EBADF, or a failure of the call itself: not an answer about the file
  }
}

/** How much of a mountinfo table is read to name a file system: a client may make many mounts of its own. */
const MOUNTINFO_MAX_BYTES = 64 * 1024;

/**
 * The file system type and mount point of mount `mntId`, from the sender's /proc/<pid>/mountinfo (mount ids are
 * unique system-wide; the sender sees the mount), else ours; "another file system" where neither has it in its
 * first MOUNTINFO_MAX_BYTES. An error path only, bounded: the kernel generates only what is read.
 */
function fileSystemOf(mntId: number | null, pid?: number): string {
  if (mntId === null) return 'another file system';
  for (const who of pid === undefined ? ['self'] : [String(pid), 'self']) {
    const buf = Buffer.alloc(MOUNTINFO_MAX_BYTES);
    const n = readHead(`/proc/${who}/mountinfo`, buf);
    if (n === null) continue; // gone, or not ours to read
    const table = buf.toString('utf8', 0, n);
    for (const line of table.split('\n')) {
      // mount id, parent id, major:minor, root, mount point, options, optional fields..., "-", type, source, ...
      const f = line.split(' ');
      if (Number(f[0]) !== mntId || f.indexOf('-') < 0) continue;
      const type = f[f.indexOf('-') + 1];
      const at = (f[4] ?? '?').replace(/\\([0-7]{3})/g, (_, o: string) =>
        String.fromCharCode(Number.parseInt(o, 8)),
      );
      return `${type} (mounted at ${at})`;
    }
  }
  return 'another file system';
}
