// Server-side checks on each command's payload and fds, against what the
// device model reported, before anything reaches the model. Each parse*
// returns the typed request or throws VfioError (answered as an error reply).
// Section names refer to QEMU's docs/interop/vfio-user.rst.
import { VfioError } from '../../errors.js';
import type { Fd } from '../../sys/fd.js';
import {
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MASK,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_ACTION_TYPE_MASK,
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_IRQ_SET_DATA_TYPE_MASK,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  vfio_device_feature,
  vfio_irq_info,
  vfio_irq_set,
  vfio_region_info,
} from '../uapi/vfio.js';
import { u32, u64 } from './codec.js';
import type { DmaUnmapRequest, VfioUserDeviceModel } from './device-model.js';
import {
  vfio_user_device_info,
  vfio_user_dma_map,
  vfio_user_dma_unmap,
  vfio_user_region_access,
} from './messages.js';
import {
  commandName,
  MIGRATION_FEATURES,
  VFIO_DMA_UNMAP_FLAG_ALL,
  VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
  VFIO_USER_DEVICE_FEATURE,
  VFIO_USER_DEVICE_SET_IRQS,
  VFIO_USER_DMA_MAP,
  VFIO_USER_F_DMA_REGION_READ,
  VFIO_USER_F_DMA_REGION_WRITE,
} from './protocol.js';

export interface ServerLimits {
  maxMsgFds: number;
  maxDataXferSize: number;
  /** Smallest supported page size: DMA maps and unmaps must be aligned to it. */
  pageSize: number;
}

const U64_END = 1n << 64n;

/** Most fds a command may carry (commands not listed carry none). */
export function maxFdsFor(command: number, limits: ServerLimits): number {
  if (command === VFIO_USER_DMA_MAP) return 1;
  if (command === VFIO_USER_DEVICE_SET_IRQS || command === VFIO_USER_DEVICE_FEATURE) return limits.maxMsgFds;
  return 0;
}

export function checkFdCount(command: number, fds: readonly Fd[], limits: ServerLimits): void {
  const max = maxFdsFor(command, limits);
  if (fds.length > max) {
    throw new VfioError('EINVAL', `${commandName(command)} carries ${fds.length} fds, takes at most ${max}`);
  }
}

function exactSize(command: string, payload: Uint8Array, size: number): void {
  if (payload.byteLength !== size) {
    throw new VfioError('EINVAL', `${command} payload is ${payload.byteLength} bytes, expected ${size}`);
  }
}

function minArgsz(command: string, argsz: number, min: number): void {
  if (argsz < min) throw new VfioError('EINVAL', `${command} argsz ${argsz} is smaller than ${min}`);
}

/** "Message sizes": argsz in a request is the largest reply the client accepts. */
export function parseInfoArgsz(
  name: 'GET_INFO' | 'GET_REGION_INFO' | 'GET_IRQ_INFO',
  payload: Uint8Array,
): { argsz: number; index: number } {
  const layout =
    name === 'GET_INFO'
      ? vfio_user_device_info
      : name === 'GET_REGION_INFO'
        ? vfio_region_info
        : vfio_irq_info;
  exactSize(`VFIO_USER_DEVICE_${name}`, payload, layout.size);
  const v = layout.decode(payload) as { argsz: number; index?: number };
  minArgsz(`VFIO_USER_DEVICE_${name}`, v.argsz, layout.size);
  return { argsz: v.argsz, index: v.index ?? 0 };
}

function aligned(v: bigint, page: number): boolean {
  return v % BigInt(page) === 0n;
}

/** "VFIO_USER_DMA_MAP": 32-byte payload, optional fd, page-aligned, non-empty, no wrap. */
export function parseDmaMap(payload: Uint8Array, limits: ServerLimits) {
  exactSize('VFIO_USER_DMA_MAP', payload, vfio_user_dma_map.size);
  const m = vfio_user_dma_map.decode(payload);
  minArgsz('VFIO_USER_DMA_MAP', m.argsz, vfio_user_dma_map.size);
  if ((m.flags & ~(VFIO_USER_F_DMA_REGION_READ | VFIO_USER_F_DMA_REGION_WRITE)) !== 0) {
    throw new VfioError('EINVAL', `VFIO_USER_DMA_MAP flags 0x${m.flags.toString(16)} has unknown bits`);
  }
  if (m.size === 0n) throw new VfioError('EINVAL', 'VFIO_USER_DMA_MAP of size 0');
  if (m.addr + m.size > U64_END) throw new VfioError('EINVAL', 'VFIO_USER_DMA_MAP range wraps past 2^64');
  for (const [k, v] of [
    ['address', m.addr],
    ['size', m.size],
    ['offset', m.offset],
  ] as const) {
    if (!aligned(v, limits.pageSize)) {
      throw new VfioError(
        'EINVAL',
        `DMA_MAP address, size and offset must be multiples of the ${limits.pageSize}-byte page (${k} is 0x${v.toString(16)})`,
      );
    }
  }
  return { offset: m.offset, iova: m.addr, size: m.size, flags: m.flags };
}

/** "VFIO_USER_DMA_UNMAP": 24-byte payload; UNMAP_FLAG_ALL with address = size = 0; no dirty bitmaps. */
export function parseDmaUnmap(
  payload: Uint8Array,
  limits: ServerLimits,
): DmaUnmapRequest & { argsz: number } {
  if (payload.byteLength < vfio_user_dma_unmap.size) {
    throw new VfioError('EINVAL', `VFIO_USER_DMA_UNMAP payload is ${payload.byteLength} bytes`);
  }
  const u = vfio_user_dma_unmap.decode(payload);
  if (u.flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP) {
    throw new VfioError('ENOTSUP', 'dirty page tracking is not supported');
  }
  exactSize('VFIO_USER_DMA_UNMAP', payload, vfio_user_dma_unmap.size);
  if ((u.flags & ~VFIO_DMA_UNMAP_FLAG_ALL) !== 0) {
    throw new VfioError('EINVAL', `VFIO_USER_DMA_UNMAP flags 0x${u.flags.toString(16)} has unknown bits`);
  }
  minArgsz('VFIO_USER_DMA_UNMAP', u.argsz, vfio_user_dma_unmap.size);
  if (u.flags & VFIO_DMA_UNMAP_FLAG_ALL) {
    if (u.addr !== 0n || u.size !== 0n)
      throw new VfioError('EINVAL', 'UNMAP_FLAG_ALL needs address and size 0');
  } else {
    if (u.size === 0n) throw new VfioError('EINVAL', 'VFIO_USER_DMA_UNMAP of size 0');
    if (u.addr + u.size > U64_END) throw new VfioError('EINVAL', 'VFIO_USER_DMA_UNMAP range wraps past 2^64');
    if (!aligned(u.addr, limits.pageSize) || !aligned(u.size, limits.pageSize)) {
      throw new VfioError(
        'EINVAL',
        `DMA_UNMAP address and size must be multiples of the ${limits.pageSize}-byte page`,
      );
    }
  }
  return { argsz: u.argsz, iova: u.addr, size: u.size, flags: u.flags };
}

/** What an access check asks of regionInfo(): flags and size, no fd. */
const NO_FD = Object.freeze({ fd: false });

function checkRegion(model: VfioUserDeviceModel, region: number, need: number, what: string) {
  const { num_regions } = model.deviceInfo();
  if (region >= num_regions)
    throw new VfioError('EINVAL', `region ${region} does not exist (${num_regions})`);
  const info = model.regionInfo(region, NO_FD);
  // Only flags and size matter here; a model that sent an fd anyway gets it closed.
  info.fd?.close();
  if ((info.flags & need) === 0) throw new VfioError('EINVAL', `region ${region} is not ${what}`);
  return info;
}

/**
 * "VFIO_USER_REGION_READ" / "VFIO_USER_REGION_WRITE": region exists, allows the access, range inside it. The
 * vfio_user_region_access head (offset u64, region u32, count u32) is read in place, not through its struct
 * codec: this runs for every register access. A write's data is the payload from byte 16 on.
 */
export function parseRegionAccess(
  write: boolean,
  payload: Uint8Array,
  model: VfioUserDeviceModel,
  limits: ServerLimits,
): { region: number; offset: bigint; count: number } {
  const name = write ? 'VFIO_USER_REGION_WRITE' : 'VFIO_USER_REGION_READ';
  const head = vfio_user_region_access.size;
  if (payload.byteLength < head) {
    throw new VfioError('EINVAL', `${name} payload is ${payload.byteLength} bytes`);
  }
  const offset = u64(payload, 0);
  const region = u32(payload, 8);
  const count = u32(payload, 12);
  exactSize(name, payload, head + (write ? count : 0));
  if (count === 0) throw new VfioError('EINVAL', `${name} of 0 bytes`);
  if (count > limits.maxDataXferSize) {
    throw new VfioError(
      'EINVAL',
      `${name} count ${count} exceeds max_data_xfer_size ${limits.maxDataXferSize}`,
    );
  }
  const info = checkRegion(
    model,
    region,
    write ? VFIO_REGION_INFO_FLAG_WRITE : VFIO_REGION_INFO_FLAG_READ,
    write ? 'writable' : 'readable',
  );
  if (offset + BigInt(count) > info.size) {
    throw new VfioError(
      'EINVAL',
      `${name} [0x${offset.toString(16)}, +${count}) is outside region ${region} of ${info.size} bytes`,
    );
  }
  return { region, offset, count };
}

/** "VFIO_USER_DEVICE_SET_IRQS": one data type, one action, range inside the index, fds/bools matching count. */
export function parseIrqSet(payload: Uint8Array, fds: readonly Fd[], model: VfioUserDeviceModel) {
  if (payload.byteLength < vfio_irq_set.size) {
    throw new VfioError('EINVAL', `VFIO_USER_DEVICE_SET_IRQS payload is ${payload.byteLength} bytes`);
  }
  const s = vfio_irq_set.decode(payload);
  if (s.argsz !== payload.byteLength) {
    throw new VfioError(
      'EINVAL',
      `VFIO_USER_DEVICE_SET_IRQS argsz ${s.argsz} != payload ${payload.byteLength}`,
    );
  }
  const dataType = s.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
  const action = s.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
  if ((s.flags & ~(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK)) !== 0) {
    throw new VfioError('EINVAL', `SET_IRQS flags 0x${s.flags.toString(16)} has unknown bits`);
  }
  const oneBit = (v: number) => v !== 0 && (v & (v - 1)) === 0;
  if (!oneBit(dataType) || !oneBit(action)) {
    throw new VfioError('EINVAL', 'SET_IRQS needs exactly one DATA_ and one ACTION_ flag');
  }
  const { num_irqs } = model.deviceInfo();
  if (s.index >= num_irqs) throw new VfioError('EINVAL', `irq index ${s.index} does not exist (${num_irqs})`);
  const info = model.irqInfo(s.index);
  const disableAll = dataType === VFIO_IRQ_SET_DATA_NONE && s.count === 0 && s.start === 0;
  if (!disableAll && (s.count === 0 || s.start + s.count > info.count)) {
    throw new VfioError(
      'EINVAL',
      `irq range [${s.start}, +${s.count}) is outside index ${s.index} (${info.count})`,
    );
  }
  if (action !== VFIO_IRQ_SET_ACTION_TRIGGER && !(info.flags & VFIO_IRQ_INFO_MASKABLE)) {
    throw new VfioError('EINVAL', `irq index ${s.index} is not maskable`);
  }
  const data = payload.subarray(vfio_irq_set.size);
  let bools: Uint8Array | undefined;
  if (dataType === VFIO_IRQ_SET_DATA_BOOL) {
    if (data.byteLength !== s.count)
      throw new VfioError('EINVAL', `DATA_BOOL needs ${s.count} bytes of data`);
    bools = data;
  } else if (dataType === VFIO_IRQ_SET_DATA_EVENTFD) {
    if (!(info.flags & VFIO_IRQ_INFO_EVENTFD)) {
      throw new VfioError('EINVAL', `irq index ${s.index} does not signal eventfds`);
    }
    // The fds travel as SCM_RIGHTS; the payload may still carry the ioctl's s32 array, which says nothing more.
    if (data.byteLength !== 0 && data.byteLength !== 4 * s.count) {
      throw new VfioError('EINVAL', `DATA_EVENTFD payload has ${data.byteLength} bytes of data`);
    }
    if (fds.length !== 0 && fds.length !== s.count) {
      throw new VfioError(
        'EINVAL',
        `DATA_EVENTFD with ${fds.length} fds for ${s.count} vectors (0 or count)`,
      );
    }
  } else if (data.byteLength !== 0) {
    throw new VfioError('EINVAL', 'DATA_NONE with data');
  }
  if (dataType !== VFIO_IRQ_SET_DATA_EVENTFD && fds.length > 0) {
    throw new VfioError('EINVAL', 'SET_IRQS carries fds without DATA_EVENTFD');
  }
  return { flags: s.flags, index: s.index, start: s.start, count: s.count, bools };
}

/** "VFIO_USER_DEVICE_FEATURE": known flag bits, GET xor SET unless probing; migration features refused. */
export function parseFeature(payload: Uint8Array) {
  if (payload.byteLength < vfio_device_feature.size) {
    throw new VfioError('EINVAL', `VFIO_USER_DEVICE_FEATURE payload is ${payload.byteLength} bytes`);
  }
  const f = vfio_device_feature.decode(payload);
  minArgsz('VFIO_USER_DEVICE_FEATURE', f.argsz, vfio_device_feature.size);
  const known =
    VFIO_DEVICE_FEATURE_MASK | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PROBE;
  if ((f.flags & ~known) !== 0) throw new VfioError('EINVAL', `feature flags 0x${f.flags.toString(16)}`);
  const feature = f.flags & VFIO_DEVICE_FEATURE_MASK;
  const get = (f.flags & VFIO_DEVICE_FEATURE_GET) !== 0;
  const set = (f.flags & VFIO_DEVICE_FEATURE_SET) !== 0;
  const probe = (f.flags & VFIO_DEVICE_FEATURE_PROBE) !== 0;
  if (!probe && get === set)
    throw new VfioError('EINVAL', 'feature request needs exactly one of GET and SET');
  if (MIGRATION_FEATURES.has(feature)) {
    throw new VfioError('ENOTSUP', `feature ${feature} (migration / dirty tracking) is not supported`);
  }
  return { argsz: f.argsz, flags: f.flags, feature, data: payload.subarray(vfio_device_feature.size) };
}
