// Variable-length VFIO/iommufd arguments: a fixed struct followed by an
// array (vfio_irq_set + data[], vfio_device_feature + data[], the dma-buf
// feature + ranges[], iommu_iova_range arrays). Pure encode/decode, no I/O;
// argsz is computed here so callers cannot get it wrong.
import { decodeArray, encodeArray } from './caps.js';
import { iommu_iova_range } from './iommufd.js';
import {
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MASK,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_IRQ_SET_ACTION_MASK,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_ACTION_TYPE_MASK,
  VFIO_IRQ_SET_ACTION_UNMASK,
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_IRQ_SET_DATA_TYPE_MASK,
  vfio_device_feature,
  vfio_device_feature_dma_buf,
  vfio_device_feature_dma_buf_revoke,
  vfio_irq_set,
  vfio_region_dma_range,
} from './vfio.js';

// --- VFIO_DEVICE_SET_IRQS ---

export type IrqAction = 'mask' | 'unmask' | 'trigger';
const ACTION_FLAG: Record<IrqAction, number> = {
  mask: VFIO_IRQ_SET_ACTION_MASK,
  unmask: VFIO_IRQ_SET_ACTION_UNMASK,
  trigger: VFIO_IRQ_SET_ACTION_TRIGGER,
};

/** What follows vfio_irq_set: nothing for `count` vectors, one bool per vector, or one eventfd (-1 to detach) per vector. */
export type IrqSetData =
  | { kind: 'none'; count: number }
  | { kind: 'bool'; values: readonly boolean[] }
  | { kind: 'eventfd'; fds: readonly number[] };

export interface IrqSetRequest {
  index: number;
  start: number;
  action: IrqAction;
  data: IrqSetData;
}

/** A full vfio_irq_set with its data[] inline, as the kernel ioctl takes it. */
export function encodeIrqSet(req: IrqSetRequest): Uint8Array {
  const { data } = req;
  const count =
    data.kind === 'none' ? data.count : data.kind === 'bool' ? data.values.length : data.fds.length;
  const dataBytes = data.kind === 'none' ? 0 : data.kind === 'bool' ? count : count * 4;
  const dataFlag =
    data.kind === 'none'
      ? VFIO_IRQ_SET_DATA_NONE
      : data.kind === 'bool'
        ? VFIO_IRQ_SET_DATA_BOOL
        : VFIO_IRQ_SET_DATA_EVENTFD;
  const argsz = vfio_irq_set.size + dataBytes;
  const out = new Uint8Array(argsz);
  vfio_irq_set.encode(
    { argsz, flags: dataFlag | ACTION_FLAG[req.action], index: req.index, start: req.start, count },
    out,
  );
  const dv = new DataView(out.buffer);
  if (data.kind === 'bool') {
    data.values.forEach((v, i) => {
      dv.setUint8(vfio_irq_set.size + i, v ? 1 : 0);
    });
  }
  if (data.kind === 'eventfd') {
    data.fds.forEach((fd, i) => {
      dv.setInt32(vfio_irq_set.size + i * 4, fd, true);
    });
  }
  return out;
}

export interface IrqSetDecoded {
  argsz: number;
  flags: number;
  index: number;
  start: number;
  count: number;
  action: IrqAction;
  kind: IrqSetData['kind'];
  /** DATA_BOOL: one entry per vector. */
  values?: boolean[];
  /**
   * DATA_EVENTFD: the fds when they are inline (kernel ioctl form). Absent when
   * argsz (or the buffer) stops after the fixed part, as in vfio-user, where the
   * eventfds travel as SCM_RIGHTS ancillary data instead.
   */
  fds?: number[];
}

/** Decode a vfio_irq_set; throws RangeError unless exactly one data type and one action are set. */
export function decodeIrqSet(buf: Uint8Array): IrqSetDecoded {
  const h = vfio_irq_set.decode(buf);
  const dataType = h.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
  const actionFlag = h.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
  const action = (Object.keys(ACTION_FLAG) as IrqAction[]).find((a) => ACTION_FLAG[a] === actionFlag);
  if (action === undefined)
    throw new RangeError(`vfio_irq_set: flags 0x${h.flags.toString(16)} name no single action`);
  const { argsz, flags, index, start, count } = h;
  const base = { argsz, flags, index, start, count, action };
  const avail = Math.min(argsz, buf.byteLength) - vfio_irq_set.size;
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  switch (dataType) {
    case VFIO_IRQ_SET_DATA_NONE:
      return { ...base, kind: 'none' };
    case VFIO_IRQ_SET_DATA_BOOL:
      if (avail < count)
        throw new RangeError(`vfio_irq_set: ${count} bools need ${count} bytes, have ${avail}`);
      return {
        ...base,
        kind: 'bool',
        values: Array.from({ length: count }, (_, i) => dv.getUint8(vfio_irq_set.size + i) !== 0),
      };
    case VFIO_IRQ_SET_DATA_EVENTFD:
      if (avail <= 0) return { ...base, kind: 'eventfd' };
      if (avail < count * 4) {
        throw new RangeError(`vfio_irq_set: ${count} eventfds need ${count * 4} bytes, have ${avail}`);
      }
      return {
        ...base,
        kind: 'eventfd',
        fds: Array.from({ length: count }, (_, i) => dv.getInt32(vfio_irq_set.size + i * 4, true)),
      };
    default:
      throw new RangeError(`vfio_irq_set: flags 0x${flags.toString(16)} name no single data type`);
  }
}

// --- VFIO_DEVICE_FEATURE ---

/** vfio_device_feature + data[]; `flags` is the feature number | GET/SET/PROBE. */
export function encodeDeviceFeature(flags: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const argsz = vfio_device_feature.size + data.byteLength;
  const out = new Uint8Array(argsz);
  vfio_device_feature.encode({ argsz, flags }, out);
  out.set(data, vfio_device_feature.size);
  return out;
}

export interface DeviceFeatureDecoded {
  argsz: number;
  flags: number;
  feature: number;
  get: boolean;
  set: boolean;
  probe: boolean;
  /** The bytes after the header, up to argsz (a view into the input). */
  data: Uint8Array;
}

export function decodeDeviceFeature(buf: Uint8Array): DeviceFeatureDecoded {
  const { argsz, flags } = vfio_device_feature.decode(buf);
  if (argsz < vfio_device_feature.size) {
    throw new RangeError(
      `vfio_device_feature: argsz ${argsz} is below the ${vfio_device_feature.size}-byte header`,
    );
  }
  return {
    argsz,
    flags,
    feature: flags & VFIO_DEVICE_FEATURE_MASK,
    get: (flags & VFIO_DEVICE_FEATURE_GET) !== 0,
    set: (flags & VFIO_DEVICE_FEATURE_SET) !== 0,
    probe: (flags & VFIO_DEVICE_FEATURE_PROBE) !== 0,
    data: buf.subarray(vfio_device_feature.size, Math.min(argsz, buf.byteLength)),
  };
}

// --- VFIO_DEVICE_FEATURE_DMA_BUF (feature 11) ---

export interface DmaRange {
  offset: bigint;
  length: bigint;
}

export interface DmaBufRequest {
  region_index: number;
  /** open(2) flags for the new fd, e.g. O_RDWR | O_CLOEXEC. */
  open_flags: number;
  /** Must be 0 today. */
  flags?: number;
  ranges: readonly DmaRange[];
}

/** vfio_device_feature_dma_buf + dma_ranges[] (the payload alone). */
export function encodeDmaBufPayload(req: DmaBufRequest): Uint8Array {
  const fixed = vfio_device_feature_dma_buf.size;
  const out = new Uint8Array(fixed + req.ranges.length * vfio_region_dma_range.size);
  vfio_device_feature_dma_buf.encode(
    {
      region_index: req.region_index,
      open_flags: req.open_flags,
      flags: req.flags ?? 0,
      nr_ranges: req.ranges.length,
    },
    out,
  );
  encodeArray(req.ranges, vfio_region_dma_range, out, fixed);
  return out;
}

export function decodeDmaBufPayload(data: Uint8Array): Required<DmaBufRequest> {
  const h = vfio_device_feature_dma_buf.decode(data);
  const ranges = decodeArray(data, vfio_device_feature_dma_buf.size, h.nr_ranges, vfio_region_dma_range);
  return { region_index: h.region_index, open_flags: h.open_flags, flags: h.flags, ranges };
}

/** The whole VFIO_DEVICE_FEATURE argument asking for a dma-buf fd over `req.ranges`. */
export function encodeDmaBufFeature(req: DmaBufRequest): Uint8Array {
  return encodeDeviceFeature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF, encodeDmaBufPayload(req));
}

/**
 * devlease/SA-1 revoke (feature 13, SET, vfio-user only): `fdIndex` names one of the fds sent with the message;
 * `flags` DMA_BUF_REVOKE_FLAG_DETACH leaves other processes' mappings of the old memory working.
 */
export function encodeDmaBufRevokeFeature(fdIndex: number, flags = 0): Uint8Array {
  return encodeDeviceFeature(
    VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
    encodeDmaBufRevokePayload(fdIndex, flags),
  );
}

export function encodeDmaBufRevokePayload(fdIndex: number, flags = 0): Uint8Array {
  return vfio_device_feature_dma_buf_revoke.encode({ fd_index: fdIndex, flags });
}

/** The revoke payload; the older 4-byte form (fd_index alone) means flags 0. */
export function decodeDmaBufRevokePayload(data: Uint8Array): { fd_index: number; flags: number } {
  if (data.length < 4)
    throw new RangeError(`revoke needs { s32 fd_index; u32 flags }, got ${data.length} bytes`);
  if (data.length >= vfio_device_feature_dma_buf_revoke.size)
    return vfio_device_feature_dma_buf_revoke.decode(data);
  return { fd_index: new DataView(data.buffer, data.byteOffset, 4).getInt32(0, true), flags: 0 };
}

// --- iommufd IOVA range arrays (IOAS_ALLOW_IOVAS input, IOAS_IOVA_RANGES output) ---

/** Inclusive range: `last` is the last IOVA in it. */
export interface IommuIovaRange {
  start: bigint;
  last: bigint;
}

export function encodeIommuIovaRanges(ranges: readonly IommuIovaRange[]): Uint8Array {
  const out = new Uint8Array(ranges.length * iommu_iova_range.size);
  encodeArray(ranges, iommu_iova_range, out, 0);
  return out;
}

export function decodeIommuIovaRanges(buf: Uint8Array, count: number): IommuIovaRange[] {
  return decodeArray(buf, 0, count, iommu_iova_range);
}
