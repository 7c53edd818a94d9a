// Slices (datasheet §8): each queue page and each device-memory granule has
// its own backing object, so one can be handed to a process alone. This file
// holds the backing contract, an in-heap backing for in-process tests, and
// the parsing of the dma-buf feature request. The memfd backing the worker
// uses is memfd-backing.ts.

import { VfioError } from '../../errors.js';
import {
  VFIO_PCI_BAR2_REGION_INDEX,
  VFIO_PCI_BAR4_REGION_INDEX,
  vfio_device_feature_dma_buf,
  vfio_region_dma_range,
} from '../../vfio/uapi/vfio.js';
import type { Sa1Options } from './options.js';

export type SliceKind = 'queue' | 'devmem';

export interface SliceRef {
  kind: SliceKind;
  index: number;
}

export interface Backing {
  /** Queue page q (QUEUE_STRIDE bytes). Re-read after renew(). */
  readonly pages: readonly Uint8Array[];
  /** Device-memory granule g (DEVMEM_GRANULE bytes). Re-read after renew(). */
  readonly granules: readonly Uint8Array[];
  /**
   * Give a slice fresh zeroed memory and let go of the old. With `fault` (the default) every remaining mapping
   * of the old memory faults; without it, mappings other processes hold keep working on the old memory, which
   * the device no longer reads or writes (a stock client's revoke: see docs/ARCHITECTURE.md).
   */
  renew(slice: SliceRef, opts?: { fault?: boolean }): void;
  /**
   * Zero queue page q from byte `from` to its end (a queue reset's reserved part). Optional: a backing that
   * can free the range without touching it says so; without it the device stores zeros.
   */
  zeroPage?(q: number, from: number): void;
  close(): void;
}

/** Plain heap memory: for driving the device model in-process without fds. */
export class HeapBacking implements Backing {
  readonly pages: Uint8Array[];
  readonly granules: Uint8Array[];
  constructor(o: Sa1Options) {
    this.pages = Array.from(
      { length: o.numQueues },
      () => new Uint8Array(new SharedArrayBuffer(o.queueStride)),
    );
    this.granules = Array.from(
      { length: o.devmemSize / o.devmemGranule },
      () => new Uint8Array(new SharedArrayBuffer(o.devmemGranule)),
    );
  }
  renew(slice: SliceRef, _opts?: { fault?: boolean }): void {
    const list = slice.kind === 'queue' ? this.pages : this.granules;
    const old = list[slice.index] as Uint8Array;
    list[slice.index] = new Uint8Array(new SharedArrayBuffer(old.length));
  }
  close(): void {}
}

/** O_ACCMODE values and O_CLOEXEC (x86-64 Linux). */
export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_ACCMODE = 3;
export const O_CLOEXEC = 0o2000000;

export interface DmaBufRequest {
  slices: SliceRef[];
  /** O_RDONLY or O_RDWR: the access mode of the fds handed out. */
  accessMode: number;
}

/**
 * Parse and check a vfio_device_feature_dma_buf payload: BAR2 ranges must be
 * exactly one queue page each, BAR4 ranges whole granules starting on a
 * granule. Returns the slices in range order (one per page or granule).
 */
export function parseDmaBufRequest(o: Sa1Options, data: Uint8Array): DmaBufRequest {
  if (data.length < vfio_device_feature_dma_buf.size) {
    throw new VfioError('EINVAL', `dma-buf request needs ${vfio_device_feature_dma_buf.size} bytes`);
  }
  const req = vfio_device_feature_dma_buf.decode(data);
  if (req.flags !== 0)
    throw new VfioError('EINVAL', `dma-buf flags must be 0, got 0x${req.flags.toString(16)}`);
  if ((req.open_flags & ~(O_ACCMODE | O_CLOEXEC)) !== 0) {
    throw new VfioError(
      'EINVAL',
      `dma-buf open_flags 0x${req.open_flags.toString(16)}: only O_ACCMODE|O_CLOEXEC`,
    );
  }
  const accessMode = req.open_flags & O_ACCMODE;
  if (accessMode !== O_RDONLY && accessMode !== O_RDWR) {
    throw new VfioError('EINVAL', 'dma-buf open_flags access mode must be O_RDONLY or O_RDWR');
  }
  if (req.nr_ranges === 0) throw new VfioError('EINVAL', 'dma-buf request with no ranges');
  const need = vfio_device_feature_dma_buf.size + req.nr_ranges * vfio_region_dma_range.size;
  if (data.length < need) {
    throw new VfioError('EINVAL', `dma-buf request with ${req.nr_ranges} ranges needs ${need} bytes`);
  }
  const slices: SliceRef[] = [];
  for (let i = 0; i < req.nr_ranges; i++) {
    const r = vfio_region_dma_range.decode(
      data,
      vfio_device_feature_dma_buf.size + i * vfio_region_dma_range.size,
    );
    if (req.region_index === VFIO_PCI_BAR2_REGION_INDEX) {
      const stride = BigInt(o.queueStride);
      if (r.offset % stride !== 0n || r.length !== stride || r.offset / stride >= BigInt(o.numQueues)) {
        throw new VfioError(
          'EINVAL',
          `BAR2 range ${i} [0x${r.offset.toString(16)}, +0x${r.length.toString(16)}) is not one queue page ` +
            `(stride 0x${o.queueStride.toString(16)}, ${o.numQueues} queues)`,
        );
      }
      slices.push({ kind: 'queue', index: Number(r.offset / stride) });
    } else if (req.region_index === VFIO_PCI_BAR4_REGION_INDEX) {
      const g = BigInt(o.devmemGranule);
      if (
        r.length === 0n ||
        r.offset % g !== 0n ||
        r.length % g !== 0n ||
        r.offset + r.length > BigInt(o.devmemSize)
      ) {
        throw new VfioError(
          'EINVAL',
          `BAR4 range ${i} [0x${r.offset.toString(16)}, +0x${r.length.toString(16)}) is not whole granules ` +
            `(granule 0x${o.devmemGranule.toString(16)}, size 0x${o.devmemSize.toString(16)})`,
        );
      }
      for (let at = r.offset; at < r.offset + r.length; at += g)
        slices.push({ kind: 'devmem', index: Number(at / g) });
    } else {
      throw new VfioError(
        'EINVAL',
        `dma-buf of region ${req.region_index}: only BAR2 and BAR4 are sliceable`,
      );
    }
  }
  return { slices, accessMode };
}

/** Encode a dma-buf request (for tests and the broker's SA-1 driver). */
export function encodeDmaBufRequest(
  regionIndex: number,
  ranges: { offset: bigint; length: bigint }[],
  openFlags = O_RDWR | O_CLOEXEC,
): Uint8Array {
  const out = new Uint8Array(vfio_device_feature_dma_buf.size + ranges.length * vfio_region_dma_range.size);
  vfio_device_feature_dma_buf.encode(
    { region_index: regionIndex, open_flags: openFlags, flags: 0, nr_ranges: ranges.length },
    out,
  );
  ranges.forEach((r, i) => {
    vfio_region_dma_range.encode(r, out, vfio_device_feature_dma_buf.size + i * vfio_region_dma_range.size);
  });
  return out;
}
