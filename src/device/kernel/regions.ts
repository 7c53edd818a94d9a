// A kernel VFIO device's regions, the parts that need no device state: GET_REGION_INFO with its
// capability chain (sparse-mmap areas, region type), the bounds check of an access, what may be
// mmapped, and the BAR mapping the device tracks. Apart from device.ts, which owns the fd, the
// region cache and the set of BAR maps, so that class reads as the Device interface it implements.
import {
  decodeRegionTypeCap,
  decodeSparseMmapCap,
  findCap,
  parseCapChain,
  VFIO_DEVICE_GET_REGION_INFO,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  vfio_region_info,
} from '../../vfio/uapi/index.js';
import type { DeviceRegion } from '../device.js';
import { codedError, type UserMemory } from './sys.js';

/** The device's ioctl on its own fd (named for messages; closed-checked by the device). */
export type DeviceIoctl = (name: string, request: number, arg: number | Uint8Array) => number;

/** DEVICE_GET_REGION_INFO; asked again with the kernel's argsz when the capability chain did not fit. */
export function readRegionInfo(ioctl: DeviceIoctl, index: number): DeviceRegion {
  const name = `VFIO_DEVICE_GET_REGION_INFO(${index})`;
  let buf = vfio_region_info.encode({ argsz: vfio_region_info.size, index });
  ioctl(name, VFIO_DEVICE_GET_REGION_INFO, buf);
  let info = vfio_region_info.decode(buf);
  if (info.argsz > buf.byteLength) {
    buf = new Uint8Array(info.argsz);
    vfio_region_info.encode({ argsz: info.argsz, index }, buf);
    ioctl(name, VFIO_DEVICE_GET_REGION_INFO, buf);
    info = vfio_region_info.decode(buf);
  }
  const region: DeviceRegion = { index, flags: info.flags, size: info.size, offset: info.offset };
  if (info.flags & VFIO_REGION_INFO_FLAG_CAPS && info.cap_offset !== 0) {
    const caps = parseCapChain(buf.subarray(0, Math.min(info.argsz, buf.byteLength)), info.cap_offset);
    const sparse = findCap(caps, VFIO_REGION_INFO_CAP_SPARSE_MMAP);
    if (sparse) region.sparse = decodeSparseMmapCap(sparse.bytes);
    const type = findCap(caps, VFIO_REGION_INFO_CAP_TYPE);
    if (type) region.type = decodeRegionTypeCap(type.bytes);
  }
  return region;
}

/** The device fd offset of [offset, +count) in region `r` (index `index`); EINVAL when it is not inside the region. */
export function regionSpan(r: DeviceRegion, index: number, offset: bigint | number, count: number): bigint {
  const off = BigInt(offset);
  if (off < 0n || count < 0 || off + BigInt(count) > r.size) {
    throw codedError(
      'EINVAL',
      `region ${index}: [0x${off.toString(16)}, +${count}) is outside its 0x${r.size.toString(16)} bytes`,
    );
  }
  return r.offset + off;
}

/** EINVAL unless [offset, +len) of region `r` may be mmapped: the region allows it, inside a sparse area if it has them. */
export function checkMappable(r: DeviceRegion, index: number, offset: bigint, len: bigint): void {
  if (!(r.flags & VFIO_REGION_INFO_FLAG_MMAP))
    throw codedError('EINVAL', `region ${index} cannot be mmapped`);
  if (r.sparse && !r.sparse.some((a) => offset >= a.offset && offset + len <= a.offset + a.size)) {
    throw codedError(
      'EINVAL',
      `region ${index}: [0x${offset.toString(16)}, +0x${len.toString(16)}) is not in a mmap area`,
    );
  }
}

/** `mem` as one of the device's BAR maps: unmapping it also drops it from `maps`. */
export function trackBarMap(maps: Set<UserMemory>, mem: UserMemory): UserMemory {
  const unmap = mem.unmap.bind(mem);
  const tracked: UserMemory = {
    address: mem.address,
    length: mem.length,
    get u8() {
      return mem.u8;
    },
    unmap: () => {
      maps.delete(tracked);
      unmap();
    },
  };
  maps.add(tracked);
  return tracked;
}
