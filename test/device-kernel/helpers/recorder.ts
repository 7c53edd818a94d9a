// A recording KernelSys for the kernel backend's host tests. It records every
// open, ioctl (with the argument bytes as sent), pread/pwrite, mmap and munmap,
// and answers ioctls with canned replies written in the UAPI layouts. It is
// not a kernel: it checks nothing and knows only the replies a test gives it
// (the usual ones are in standardReplies). The real proof is the guest test.
//
// Fds are real: each opened node and each fd a reply hands out is a real
// descriptor of /dev/null, so closing and leaks are observable; recordCloses()
// records their closes in order with the other calls.

import { type KernelSys, realSys, type UserMemory } from '../../../src/device/kernel/sys.js';
import { SysError } from '../../../src/errors.js';
import { Fd } from '../../../src/sys/fd.js';
import { native } from '../../../src/sys/native.js';

export interface Call {
  op: 'open' | 'ioctl' | 'pread' | 'pwrite' | 'mmap' | 'munmap' | 'scratch' | 'close';
  /** The path the fd was opened as (or the label a reply gave it). */
  file: string;
  request?: number;
  /** The integer argument, or a copy of the buffer as the backend sent it. */
  arg?: number | Uint8Array;
  offset?: bigint;
  length?: number;
  /** mmap/munmap/scratch: the address of the memory. */
  address?: bigint;
}

export type Reply = (arg: number | Uint8Array, call: Call, rec: Recorder) => number | undefined;

/** A failing syscall, shaped as the addon's errors are. */
export const kernelError = (code: string, syscall = 'ioctl') => new SysError(syscall, code);

export class Recorder implements KernelSys {
  readonly calls: Call[] = [];
  readonly replies = new Map<number, Reply>();
  /** Paths whose open fails with this code. */
  readonly failOpen = new Map<string, string>();
  /** pread answers: bytes at an absolute file offset. */
  readonly memory = new Map<bigint, Uint8Array>();
  readonly #names = new Map<number, string>();
  /** The numbers handed out and not seen closed (a closed number is anyone's to reuse). */
  readonly #open = new Set<number>();
  readonly #scratch = new Map<bigint, UserMemory>();

  /** A real descriptor (of /dev/null) labelled `name`, as the raw number a syscall returns. */
  newFd(name: string): number {
    const n = native.open('/dev/null', native.constants.O_RDWR as number);
    this.#names.set(n, name);
    this.#open.add(n);
    return n;
  }

  /**
   * Until disposed, each close of a descriptor this recorder handed out is a call ('close <file>'), in order with
   * the others. Hooked where every Fd's close ends (native.close), not on the Fds open() returns: the backend
   * wraps some numbers in Fds of its own (the device fd VFIO_GROUP_GET_DEVICE_FD answers).
   */
  recordCloses(): Disposable {
    const real = native.close;
    native.close = (fd: number) => {
      if (this.#open.delete(fd)) this.calls.push({ op: 'close', file: this.fileOf(fd) });
      return real(fd);
    };
    return {
      [Symbol.dispose]: () => {
        native.close = real;
      },
    };
  }

  fileOf(fd: Fd | number): string {
    const n = typeof fd === 'number' ? fd : fd.fd;
    return this.#names.get(n) ?? `fd ${n}`;
  }

  /** The fd number a path was opened as (the latest open of it). */
  fdOf(path: string): number {
    const hit = [...this.#names].reverse().find(([, p]) => p === path);
    if (!hit) throw new Error(`${path} was never opened`);
    return hit[0];
  }

  open(path: string): Fd {
    this.calls.push({ op: 'open', file: path });
    const code = this.failOpen.get(path);
    if (code) throw kernelError(code, 'open');
    return new Fd(this.newFd(path));
  }

  ioctl(fd: Fd, request: number, arg: number | Uint8Array): number {
    const call: Call = {
      op: 'ioctl',
      file: this.fileOf(fd),
      request,
      arg: typeof arg === 'number' ? arg : arg.slice(),
    };
    this.calls.push(call);
    const reply = this.replies.get(request);
    if (!reply) throw kernelError('ENOTTY');
    return reply(arg, call, this) ?? 0;
  }

  /**
   * From now on `request` is answered by writing `value` as a u64 at byte `offset` of its argument (a field the
   * kernel writes back); returns a function that puts the previous reply back.
   */
  writeBack(request: number, offset: number, value: bigint): () => void {
    const before = this.replies.get(request);
    this.replies.set(request, (arg) => {
      const buf = arg as Uint8Array;
      new DataView(buf.buffer, buf.byteOffset).setBigUint64(offset, value, true);
      return 0;
    });
    return () => {
      if (before) this.replies.set(request, before);
      else this.replies.delete(request);
    };
  }

  pread(fd: Fd, buf: Uint8Array, offset: bigint): number {
    this.calls.push({ op: 'pread', file: this.fileOf(fd), offset, length: buf.byteLength });
    buf.fill(0);
    for (const [at, bytes] of this.memory) {
      const start = Number(offset - at);
      if (start >= 0 && start < bytes.byteLength) buf.set(bytes.subarray(start, start + buf.byteLength));
    }
    return buf.byteLength;
  }

  pwrite(fd: Fd, buf: Uint8Array, offset: bigint): number {
    this.calls.push({ op: 'pwrite', file: this.fileOf(fd), offset, arg: buf.slice() });
    return buf.byteLength;
  }

  /** Stands in a private scratch page for the file's pages; records the munmap. */
  mmap(fd: Fd, length: number, offset: bigint, prot: 'r' | 'rw'): UserMemory {
    const mem = realSys.scratch(length);
    const file = `${this.fileOf(fd)} (${prot})`;
    this.calls.push({ op: 'mmap', file, offset, length, address: mem.address });
    return this.#tracked(mem, file);
  }

  scratch(length: number): UserMemory {
    const mem = realSys.scratch(length);
    this.calls.push({ op: 'scratch', file: 'scratch', length, address: mem.address });
    const t = this.#tracked(mem, 'scratch');
    this.#scratch.set(mem.address, t);
    return t;
  }

  /** What a reply writes "to user memory": only scratch memory the backend handed over works. */
  userMemory(address: bigint): Uint8Array {
    const mem = this.#scratch.get(address);
    if (!mem) throw new Error(`no scratch memory at 0x${address.toString(16)}`);
    return mem.u8;
  }

  #tracked(mem: UserMemory, file: string): UserMemory {
    let gone = false;
    return {
      address: mem.address,
      length: mem.length,
      get u8() {
        return mem.u8;
      },
      unmap: () => {
        if (gone) return;
        gone = true;
        this.calls.push({ op: 'munmap', file, address: mem.address, length: mem.length });
        this.#scratch.delete(mem.address);
        mem.unmap();
      },
    };
  }

  /** One line per call, e.g. 'ioctl /dev/iommu 0x3b81', for sequence assertions. */
  lines(from = 0): string[] {
    return this.calls.slice(from).map((c) => {
      if (c.op === 'ioctl') return `ioctl ${c.file} 0x${c.request!.toString(16)}`;
      if (c.op === 'pread' || c.op === 'pwrite') return `${c.op} ${c.file} 0x${c.offset!.toString(16)}`;
      return `${c.op} ${c.file}`;
    });
  }

  /** The ioctls with this request number, in order. */
  ioctls(request: number): Call[] {
    return this.calls.filter((c) => c.op === 'ioctl' && c.request === request);
  }

  /** The bytes of the only (or `nth`) ioctl with this request. */
  argOf(request: number, nth = 0): Uint8Array {
    const c = this.ioctls(request)[nth];
    if (!c || !(c.arg instanceof Uint8Array))
      throw new Error(`no buffer ioctl 0x${request.toString(16)} #${nth}`);
    return c.arg;
  }
}

/** Little-endian bytes written field by field, for expected arguments built by hand from the C layout. */
export function le(...fields: [width: 1 | 2 | 4 | 8, value: number | bigint][]): Uint8Array {
  const size = fields.reduce((n, [w]) => n + w, 0);
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);
  let at = 0;
  for (const [w, v] of fields) {
    if (w === 1) dv.setUint8(at, Number(v));
    else if (w === 2) dv.setUint16(at, Number(v), true);
    else if (w === 4) dv.setUint32(at, Number(v) >>> 0, true);
    else dv.setBigUint64(at, BigInt(v), true);
    at += w;
  }
  return out;
}
