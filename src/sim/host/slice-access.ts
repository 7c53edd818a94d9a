// The slices' memory on the front end: the dma-buf feature's new descriptions of it (open), and the owner's
// REGION_READ / REGION_WRITE of BAR2 (queue pages) and BAR4 (device memory), served by the front
// end from the slices' own memory (their memfds, whose current numbers the worker publishes), with no round
// trip to the device worker — what a holder of the slice sees through its mapping, read or written the same
// way. Besides costing no thread wake-up, this keeps the owner's register accesses answered while the device
// waits on the owner (memory without an fd, remote-dma.ts): QEMU does not serve the device's DMA_READ while
// one of its vCPUs waits for such a read (observed with 11.1), so a read that waited on the device would
// deadlock them until a deadline.
//
// Queue page registers (datasheet §2.3) are the page's words: the device publishes SQ_HEAD, CQ_TAIL, Q_ERROR
// and Q_NOTIFY there and reads the owner's stores from there (queue.ts publish / pageRegister). Reads past the
// registers read 0; stores to read-only or reserved words are ignored, as the device does. A store to SQ_TAIL
// wakes the device (`doorbell`), as the request that served it did.

import { VfioError } from '../../errors.js';
import { Fd, native } from '../../sys/index.js';
import {
  QP_CQ_BASE,
  QP_CQ_HEAD,
  QP_CQ_SIZE,
  QP_IRQ_MODE,
  QP_REGISTERS_END,
  QP_SQ_BASE,
  QP_SQ_SIZE,
  QP_SQ_TAIL,
} from '../model/datasheet.js';
import { sliceFdIndex } from '../model/memfd-backing.js';
import type { Sa1Options } from '../model/options.js';
import { O_ACCMODE, O_RDONLY, parseDmaBufRequest } from '../model/slices.js';

const { O_RDONLY: OPEN_RDONLY, O_RDWR: OPEN_RDWR } = native.constants as Record<string, number> as {
  O_RDONLY: number;
  O_RDWR: number;
};

/** The queue page words the owner may store (the rest are read-only or reserved). */
const WRITABLE = new Set([
  QP_SQ_BASE,
  QP_SQ_BASE + 4,
  QP_SQ_SIZE,
  QP_SQ_TAIL,
  QP_CQ_BASE,
  QP_CQ_BASE + 4,
  QP_CQ_SIZE,
  QP_CQ_HEAD,
  QP_IRQ_MODE,
]);

export class SliceAccess {
  constructor(
    private readonly options: Sa1Options,
    /** The slices' current memfd numbers (memfd-backing.ts), -1 once the device shut down. */
    private readonly sliceFds: Int32Array,
    /** Wake the device for a doorbell of queue q. */
    private readonly doorbell: (q: number) => void,
  ) {}

  /** BAR2: `count` bytes of queue page registers, word by word (checkRegionAccess made them whole words). */
  readPages(offset: number, count: number): Uint8Array {
    const out = new Uint8Array(count);
    const stride = this.options.queueStride;
    for (let i = 0; i < count; i += 4) {
      const q = Math.floor((offset + i) / stride);
      const at = (offset + i) % stride;
      if (at + 4 > QP_REGISTERS_END) continue; // past the registers: 0
      this.#pread(this.#fd('queue', q), out.subarray(i, i + 4), at);
    }
    return out;
  }

  writePages(offset: number, data: Uint8Array): void {
    const stride = this.options.queueStride;
    for (let i = 0; i < data.length; i += 4) {
      const q = Math.floor((offset + i) / stride);
      const at = (offset + i) % stride;
      if (!WRITABLE.has(at)) continue;
      native.pwrite(this.#fd('queue', q), data.subarray(i, i + 4), at);
      if (at === QP_SQ_TAIL) this.doorbell(q);
    }
  }

  /** BAR4: device memory, granule by granule. */
  readDevmem(offset: number, count: number): Uint8Array {
    const out = new Uint8Array(count);
    this.#granules(offset, count, (fd, at, done, n) => this.#pread(fd, out.subarray(done, done + n), at));
    return out;
  }

  writeDevmem(offset: number, data: Uint8Array): void {
    this.#granules(offset, data.length, (fd, at, done, n) => {
      native.pwrite(fd, data.subarray(done, done + n), at);
    });
  }

  /**
   * The dma-buf feature (datasheet §8): a new open description of each requested slice's memory, read-only
   * if asked. Served on the front end: the worker renews a slice's memory only inside a revoke, which the
   * owner's connection waits for before its next request, so the numbers read here are current.
   */
  open(payload: Uint8Array): Fd[] {
    const req = parseDmaBufRequest(this.options, payload);
    const mode = (req.accessMode & O_ACCMODE) === O_RDONLY ? OPEN_RDONLY : OPEN_RDWR;
    const fds: Fd[] = [];
    try {
      for (const s of req.slices)
        fds.push(new Fd(native.open(`/proc/self/fd/${this.#fd(s.kind, s.index)}`, mode)));
    } catch (err) {
      for (const f of fds) f.close();
      throw err;
    }
    return fds;
  }

  #granules(
    offset: number,
    count: number,
    each: (fd: number, at: number, done: number, n: number) => void,
  ): void {
    const granule = this.options.devmemGranule;
    for (let done = 0; done < count; ) {
      const g = Math.floor((offset + done) / granule);
      const at = (offset + done) % granule;
      const n = Math.min(count - done, granule - at);
      each(this.#fd('devmem', g), at, done, n);
      done += n;
    }
  }

  #fd(kind: 'queue' | 'devmem', index: number): number {
    const fd = Atomics.load(this.sliceFds, sliceFdIndex(this.options, { kind, index }));
    if (fd < 0) throw new VfioError('ENODEV', 'the SA-1 device has shut down');
    return fd;
  }

  /** Fill `into` from the memfd (its size never shrinks below a slice: a short read is a fault). */
  #pread(fd: number, into: Uint8Array, at: number): void {
    const n = native.pread(fd, into, at);
    if (n !== into.length) throw new VfioError('EIO', `slice memory read ${n} of ${into.length} bytes`);
  }
}
