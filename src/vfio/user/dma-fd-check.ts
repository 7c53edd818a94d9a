// What can be told about a DMA_MAP fd before mapping it: the broker checks a
// client's fd at the edge, and the SA-1 simulator checks every fd its owner
// maps (datasheet rev 2 §7), with the same answers. A pipe, socket or
// directory is no memory at all (EBADF); a regular file (memfd, shm, file)
// must hold [offset, offset + size) (EINVAL: a 0-byte memfd or an offset past
// its end); a description opened without the access the map asks for cannot
// be mapped that way (EACCES). Anything else (a dma-buf, a device node) goes
// on to mmap, which decides.

import { VfioError } from '../../errors.js';
import { native } from '../../sys/native.js';

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFIFO = 0o010000;
const S_IFSOCK = 0o140000;
const S_IFDIR = 0o040000;
const NOT_MEMORY = new Map([
  [S_IFIFO, 'a pipe'],
  [S_IFSOCK, 'a socket'],
  [S_IFDIR, 'a directory'],
]);
const O_ACCMODE = 0o3;
const O_RDONLY = 0o0;
const O_WRONLY = 0o1;

/** `fd`: an Fd or a process-wide fd number (the simulator's device worker has numbers). */
export function checkDmaFd(
  fdOrNumber: { fd: number } | number,
  m: { offset: bigint; size: bigint; write: boolean },
): void {
  const fd = typeof fdOrNumber === 'number' ? fdOrNumber : fdOrNumber.fd;
  const st = native.fstat(fd);
  const type = st.mode & S_IFMT;
  const kind = NOT_MEMORY.get(type);
  if (kind) {
    throw new VfioError('EBADF', `the DMA_MAP fd is ${kind}, not memory: map a memfd, shm or file`);
  }
  if (type === S_IFREG) {
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
