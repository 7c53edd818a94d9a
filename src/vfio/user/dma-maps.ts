// The client's side of server-to-client VFIO_USER_DMA_READ / DMA_WRITE
// (vfio-user.rst, "Read and Write Operations": they "must be supported by
// the client ... even if the corresponding memory ... has been shared as
// mappable"). Every DMA_MAP the client sends is recorded here with what
// backs it — a duplicate of the map's fd (pread/pwrite at the map's file
// offset), or, for a map without an fd, the DmaMemory the caller gave — and
// the server's accesses are served from it, bounds- and permission-checked.
//
// An access must lie inside one map: libvfio-user splits its transfers per
// map (one scatter-gather entry each), so nothing legitimate spans two.
import { VfioError } from '../../errors.js';
import { closeSoon, Fd, fdNumber, RECEIVED } from '../../sys/fd.js';
import { native } from '../../sys/native.js';
import { vfio_user_dma_region_access } from './messages.js';
import { VFIO_USER_F_DMA_REGION_READ, VFIO_USER_F_DMA_REGION_WRITE } from './protocol.js';

/**
 * Memory behind a map that has no fd: offsets are relative to the map's iova. `receivedAt`: when the server's
 * command was read (performance.now()), for memory that serves it within a deadline (a broker's relay).
 */
export interface DmaMemory {
  read(offset: bigint, count: number, receivedAt?: number): Uint8Array | Promise<Uint8Array>;
  write(offset: bigint, data: Uint8Array, receivedAt?: number): void | Promise<void>;
}

export interface DmaMapEntry {
  readonly iova: bigint;
  readonly size: bigint;
  /** VFIO_USER_F_DMA_REGION_READ / _WRITE as sent in the DMA_MAP. */
  readonly flags: number;
  /** Our own duplicate of the map's fd (closed on unmap, or just after: closeSoon), with the map's file offset. */
  readonly fd: Fd | null;
  readonly offset: bigint;
  readonly memory: DmaMemory | null;
}

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;

/** A plain buffer as DmaMemory (it must hold the whole map). */
export function bufferMemory(buf: Uint8Array): DmaMemory {
  return {
    read: (offset, count) => buf.slice(Number(offset), Number(offset) + count),
    write: (offset, data) => buf.set(data, Number(offset)),
  };
}

/**
 * The memory of a map without an fd at `iova`: whatever `source()` gives at the time of each access (a broker
 * relays a lease's memory, and an upgraded broker serves the maps it adopted before it has its leases).
 */
export function memoryServedLater(
  source: () => ((iova: bigint) => DmaMemory) | null,
  iova: bigint,
): DmaMemory {
  const now = () => {
    const serve = source();
    if (!serve)
      throw new VfioError(
        'EFAULT',
        `nothing serves the memory mapped without an fd at 0x${iova.toString(16)}`,
      );
    return serve(iova);
  };
  return {
    read: (offset, count, at) => now().read(offset, count, at),
    write: (offset, data, at) => now().write(offset, data, at),
  };
}

export class ClientDmaMaps {
  /** Sorted by iova, never overlapping. */
  #maps: DmaMapEntry[] = [];
  readonly #maxXfer: number;
  readonly #deferCloses: boolean;

  /**
   * `maxXfer`: the max_data_xfer_size this client advertised (the largest count it must serve).
   * `deferCloses`: the fds of the maps a DMA_UNMAP took away are closed after the caller went on
   * (VfioUserClientOptions.closeUnmappedSoon).
   */
  constructor(maxXfer: number, deferCloses = false) {
    this.#maxXfer = maxXfer;
    this.#deferCloses = deferCloses;
  }

  get size(): number {
    return this.#maps.length;
  }

  /**
   * Record a map before its DMA_MAP is sent (the server may DMA as soon as it has processed it, before the
   * reply is read). A map overlapping a recorded one is not recorded (returns null): the server must refuse
   * it with EEXIST. Throws (nothing recorded) if the fd cannot be duplicated.
   */
  add(m: {
    iova: bigint;
    size: bigint;
    flags: number;
    fd: Fd | number | null;
    offset: bigint;
    memory: DmaMemory | null;
  }): DmaMapEntry | null {
    // Sorted and never overlapping: only the maps either side of where this one goes can overlap it.
    const at = this.#firstFrom(m.iova);
    const before = this.#maps[at - 1];
    const after = this.#maps[at];
    if (
      m.size <= 0n ||
      (before && before.iova + before.size > m.iova) ||
      (after && after.iova < m.iova + m.size)
    ) {
      return null;
    }
    // A copy of the caller's fd, as received as it is (a broker relays a client's: its close may wait on a
    // server that client runs, sys/fd.ts); a bare number's origin is unknown, so it is taken as received.
    const fd =
      m.fd == null ? null : m.fd instanceof Fd ? m.fd.dup() : new Fd(native.dup(fdNumber(m.fd)), RECEIVED);
    const entry: DmaMapEntry = {
      iova: m.iova,
      size: m.size,
      flags: m.flags,
      fd,
      offset: m.offset,
      memory: m.memory,
    };
    this.#maps.splice(at, 0, entry);
    return entry;
  }

  /** The maps recorded (a broker upgrade hands them over, with their fds, to the process carrying on). */
  entries(): readonly DmaMapEntry[] {
    return this.#maps;
  }

  /** Take over a map another process recorded (an upgrade): `fd` is owned from here; without one, `memory` serves it. */
  adopt(m: {
    iova: bigint;
    size: bigint;
    flags: number;
    fd: Fd | null;
    offset: bigint;
    memory?: DmaMemory;
  }): void {
    const entry: DmaMapEntry = { ...m, memory: m.memory ?? null };
    this.#maps.splice(this.#firstFrom(m.iova), 0, entry);
  }

  /** Forget one map (its DMA_MAP failed, or it was unmapped) and close our fd. */
  remove(entry: DmaMapEntry | null): void {
    if (!entry) return;
    const i = this.#firstFrom(entry.iova);
    if (this.#maps[i] === entry) this.#maps.splice(i, 1);
    entry.fd?.close();
  }

  /**
   * After a successful DMA_UNMAP: forget every map inside [iova, iova + size), or all of them. Sorted and
   * never overlapping, the maps inside are one run, taken out with one splice: a broker's window unmap
   * removes a lease's maps from among every other lease's (issue 16, seventeenth pass).
   */
  removeRange(iova: bigint, size: bigint, all: boolean): void {
    let from = 0;
    let to = this.#maps.length;
    if (!all) {
      const end = iova + size;
      from = this.#firstFrom(iova);
      // Each map ends before the next begins, so the ends grow too: the first that ends past `end` ends the run.
      for (to = from; to < this.#maps.length; to++) {
        const e = this.#maps[to]!;
        if (e.iova + e.size > end) break;
      }
    }
    const gone = this.#maps.splice(from, to - from);
    if (this.#deferCloses) closeSoon(gone.flatMap((e) => (e.fd ? [e.fd] : [])));
    else for (const e of gone) e.fd?.close();
  }

  /** The index of the first map at or after `iova` (the length if none): a binary search. */
  #firstFrom(iova: bigint): number {
    let lo = 0;
    let hi = this.#maps.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#maps[mid]!.iova < iova) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Forget every map (the connection is gone). */
  clear(): void {
    for (const e of this.#maps.splice(0)) e.fd?.close();
  }

  /** VFIO_USER_DMA_READ: the server reads our memory. Returns the reply payload (access head, then the bytes). */
  async read(payload: Uint8Array, receivedAt = performance.now()): Promise<Uint8Array> {
    const name = 'VFIO_USER_DMA_READ';
    if (payload.byteLength !== vfio_user_dma_region_access.size) {
      throw new VfioError(
        'EINVAL',
        `${name} payload is ${payload.byteLength} bytes, must be ${vfio_user_dma_region_access.size}`,
      );
    }
    const { addr, count } = vfio_user_dma_region_access.decode(payload);
    const n = this.#count(name, count);
    const { entry, at } = this.#find(name, addr, n, VFIO_USER_F_DMA_REGION_READ);
    let data: Uint8Array;
    if (entry.memory) {
      data = await entry.memory.read(at, n, receivedAt);
      if (data.byteLength !== n) {
        throw new VfioError('EIO', `the map's memory returned ${data.byteLength} bytes for ${n}`);
      }
    } else {
      data = new Uint8Array(n);
      readFully(entry.fd as Fd, data, entry.offset + at);
    }
    const out = new Uint8Array(vfio_user_dma_region_access.size + n);
    vfio_user_dma_region_access.encode({ addr, count }, out);
    out.set(data, vfio_user_dma_region_access.size);
    return out;
  }

  /**
   * VFIO_USER_DMA_WRITE: the server writes our memory. The reply is the 16-byte access head (address, u64
   * count): what libvfio-user reads back and compares (the spec's table gives count 4 bytes there, unlike
   * the request's 8; libvfio-user's struct vfio_user_dma_region_access is what peers use).
   */
  async write(payload: Uint8Array, receivedAt = performance.now()): Promise<Uint8Array> {
    const name = 'VFIO_USER_DMA_WRITE';
    const head = vfio_user_dma_region_access.size;
    if (payload.byteLength < head) {
      throw new VfioError('EINVAL', `${name} payload is ${payload.byteLength} bytes, shorter than ${head}`);
    }
    const { addr, count } = vfio_user_dma_region_access.decode(payload);
    if (BigInt(payload.byteLength - head) !== count) {
      throw new VfioError('EINVAL', `${name} count ${count} but ${payload.byteLength - head} data bytes`);
    }
    const n = this.#count(name, count);
    const { entry, at } = this.#find(name, addr, n, VFIO_USER_F_DMA_REGION_WRITE);
    const data = payload.subarray(head);
    if (entry.memory) await entry.memory.write(at, data.slice(), receivedAt);
    else writeFully(entry.fd as Fd, data, entry.offset + at);
    return payload.slice(0, head);
  }

  #count(name: string, count: bigint): number {
    if (count === 0n) throw new VfioError('EINVAL', `${name} of 0 bytes`);
    if (count > BigInt(this.#maxXfer)) {
      throw new VfioError('EINVAL', `${name} count ${count} exceeds our max_data_xfer_size ${this.#maxXfer}`);
    }
    return Number(count);
  }

  /** The one map holding [addr, addr + n) with permission `need`: EFAULT if none, EPERM if not allowed. */
  #find(name: string, addr: bigint, n: number, need: number): { entry: DmaMapEntry; at: bigint } {
    const end = addr + BigInt(n);
    const range = `[0x${addr.toString(16)}, 0x${end.toString(16)})`;
    // The map holding addr is the last one starting at or before it.
    const last = this.#maps[this.#firstFrom(addr + 1n) - 1];
    const entry = last && addr < last.iova + last.size ? last : undefined;
    if (!entry) throw new VfioError('EFAULT', `${name} of ${range}: no DMA map there`);
    if (end > entry.iova + entry.size) {
      throw new VfioError(
        'EFAULT',
        `${name} of ${range} runs past the end of the map at 0x${entry.iova.toString(16)} (size 0x${entry.size.toString(16)})`,
      );
    }
    if (!(entry.flags & need)) {
      const what = need === VFIO_USER_F_DMA_REGION_READ ? 'readable' : 'writable';
      throw new VfioError('EPERM', `${name} of ${range}: the map is not ${what} by the device`);
    }
    if (!entry.fd && !entry.memory) {
      throw new VfioError(
        'EFAULT',
        `${name} of ${range}: the map has neither an fd nor memory to serve it from`,
      );
    }
    return { entry, at: addr - entry.iova };
  }
}

function readFully(fd: Fd, buf: Uint8Array, offset: bigint): void {
  for (let done = 0; done < buf.byteLength; ) {
    const n = io('pread', () => native.pread(fd.fd, buf.subarray(done), offset + BigInt(done)));
    if (n === 0) {
      throw new VfioError(
        'EFAULT',
        `the map's file ends before offset 0x${(offset + BigInt(done)).toString(16)}`,
      );
    }
    done += n;
  }
}

function writeFully(fd: Fd, data: Uint8Array, offset: bigint): void {
  // Never grow the client's file: memory past its end is not memory the map gave (an mmap would SIGBUS).
  // The cached size (statx AT_STATX_DONT_SYNC): exact for memory, and the file system is not asked.
  const st = io('statx', () => native.statCached(fd.fd));
  if ((st.mode & S_IFMT) === S_IFREG && offset + BigInt(data.byteLength) > BigInt(st.size)) {
    throw new VfioError('EFAULT', `the map's file ends at 0x${st.size.toString(16)}, before the write's end`);
  }
  for (let done = 0; done < data.byteLength; ) {
    done += io('pwrite', () => native.pwrite(fd.fd, data.subarray(done), offset + BigInt(done)));
  }
}

/** An I/O failure on the map's fd is EIO to the server (as libvfio-user answers for its own file-backed maps). */
function io<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new VfioError('EIO', `${what} on the map's fd failed: ${(err as Error).message}`);
  }
}
