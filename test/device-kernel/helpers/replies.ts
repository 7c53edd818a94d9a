// Canned kernel replies for the recorder, written with the UAPI layouts the
// backend decodes: what a vfio-pci device with a 1 MiB BAR0 (sparse-mmap
// capability), config space, a typed device-specific region 9, MSI and an
// iommufd/type1 IOMMU with two IOVA ranges would answer. Also a scratch sysfs
// tree and the ioctl numbers written out as literals (from the kernel's
// _IO(';', nr)), so the tests do not take them from the code under test.

import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  buildCapChain,
  iommu_ioas_alloc,
  iommu_ioas_iova_ranges,
  iommu_ioas_map_file,
  iommu_ioas_unmap,
  iovaRangeCap,
  regionTypeCap,
  sparseMmapCap,
  vfio_device_bind_iommufd,
  vfio_device_info,
  vfio_group_status,
  vfio_iommu_type1_info,
  vfio_irq_info,
  vfio_region_info,
} from '../../../src/vfio/uapi/index.js';
import { kernelError, le, type Recorder } from './recorder.js';

export const NR = {
  VFIO_GET_API_VERSION: 0x3b64,
  VFIO_CHECK_EXTENSION: 0x3b65,
  VFIO_SET_IOMMU: 0x3b66,
  VFIO_GROUP_GET_STATUS: 0x3b67,
  VFIO_GROUP_SET_CONTAINER: 0x3b68,
  VFIO_GROUP_GET_DEVICE_FD: 0x3b6a,
  VFIO_DEVICE_GET_INFO: 0x3b6b,
  VFIO_DEVICE_GET_REGION_INFO: 0x3b6c,
  VFIO_DEVICE_GET_IRQ_INFO: 0x3b6d,
  VFIO_DEVICE_SET_IRQS: 0x3b6e,
  VFIO_DEVICE_RESET: 0x3b6f,
  VFIO_IOMMU_GET_INFO: 0x3b70,
  VFIO_IOMMU_MAP_DMA: 0x3b71,
  VFIO_IOMMU_UNMAP_DMA: 0x3b72,
  VFIO_DEVICE_FEATURE: 0x3b75,
  VFIO_DEVICE_BIND_IOMMUFD: 0x3b76,
  VFIO_DEVICE_ATTACH_IOMMUFD_PT: 0x3b77,
  VFIO_DEVICE_DETACH_IOMMUFD_PT: 0x3b78,
  IOMMU_DESTROY: 0x3b80,
  IOMMU_IOAS_ALLOC: 0x3b81,
  IOMMU_IOAS_IOVA_RANGES: 0x3b84,
  IOMMU_IOAS_MAP: 0x3b85,
  IOMMU_IOAS_UNMAP: 0x3b86,
  IOMMU_IOAS_MAP_FILE: 0x3b8f,
} as const;

export const BDF = '0000:00:04.0';
export const DEV_ID = 1;
export const IOAS_ID = 2;
export const RANGES = [
  { start: 0n, last: 0xfedf_ffffn },
  { start: 0xfef0_0000n, last: (1n << 48n) - 1n },
];
export const SPARSE = [
  { offset: 0n, size: 0x1000n },
  { offset: 0x2000n, size: 0xfe000n },
];
export const regionOffset = (index: number) => BigInt(index) << 40n;

interface RegionSpec {
  flags: number;
  size: bigint;
  caps: Uint8Array;
}
const RW = 0x3;
const RW_MMAP = 0x7;
const REGIONS = new Map<number, RegionSpec>([
  [
    0,
    {
      flags: RW_MMAP,
      size: 1n << 20n,
      caps: buildCapChain(
        [sparseMmapCap(SPARSE), { id: 3, version: 1, bytes: new Uint8Array(8) }],
        vfio_region_info.size,
      ),
    },
  ],
  [7, { flags: RW, size: 256n, caps: new Uint8Array(0) }],
  [
    9,
    { flags: 0x1, size: 4096n, caps: buildCapChain([regionTypeCap(0x80001234, 1)], vfio_region_info.size) },
  ],
]);

/** An info reply with a capability chain: too small an argsz gets the size needed and no chain. */
function withCaps(
  arg: Uint8Array,
  layout: { size: number },
  info: Record<string, unknown>,
  chain: Uint8Array,
  encode: (v: Record<string, unknown>, out: Uint8Array) => void,
): void {
  const need = layout.size + chain.byteLength;
  const argsz = new DataView(arg.buffer, arg.byteOffset).getUint32(0, true);
  if (chain.byteLength === 0) {
    encode({ ...info, argsz: layout.size, cap_offset: 0 }, arg);
  } else if (argsz < need) {
    encode({ ...info, argsz: need, cap_offset: 0 }, arg);
  } else {
    encode({ ...info, argsz: need, cap_offset: layout.size }, arg);
    arg.set(chain, layout.size);
  }
}

export interface ReplyOptions {
  mapFile?: boolean;
  dmaBuf?: boolean;
}

export function standardReplies(rec: Recorder, opts: ReplyOptions = {}): void {
  const r = rec.replies;
  const buf = (a: number | Uint8Array) => a as Uint8Array;
  // --- iommufd / cdev ---
  r.set(NR.VFIO_DEVICE_BIND_IOMMUFD, (a) => {
    const v = vfio_device_bind_iommufd.decode(buf(a));
    vfio_device_bind_iommufd.encode({ ...v, out_devid: DEV_ID }, buf(a));
    return 0;
  });
  r.set(NR.IOMMU_IOAS_ALLOC, (a) => {
    iommu_ioas_alloc.encode({ size: iommu_ioas_alloc.size, flags: 0, out_ioas_id: IOAS_ID }, buf(a));
    return 0;
  });
  r.set(NR.VFIO_DEVICE_ATTACH_IOMMUFD_PT, () => 0);
  r.set(NR.VFIO_DEVICE_DETACH_IOMMUFD_PT, () => 0);
  r.set(NR.IOMMU_IOAS_IOVA_RANGES, (a, _c, self) => {
    const v = iommu_ioas_iova_ranges.decode(buf(a));
    iommu_ioas_iova_ranges.encode({ ...v, num_iovas: RANGES.length, out_iova_alignment: 4096n }, buf(a));
    if (v.num_iovas < RANGES.length) throw kernelError('EMSGSIZE');
    const mem = self.userMemory(v.allowed_iovas);
    const dv = new DataView(mem.buffer, mem.byteOffset);
    RANGES.forEach((x, i) => {
      dv.setBigUint64(i * 16, x.start, true);
      dv.setBigUint64(i * 16 + 8, x.last, true);
    });
    return 0;
  });
  r.set(NR.IOMMU_IOAS_MAP_FILE, (a) => {
    if (opts.mapFile === false) throw kernelError('ENOTTY');
    if (iommu_ioas_map_file.decode(buf(a)).fd < 0) throw kernelError('EBADF');
    return 0;
  });
  r.set(NR.IOMMU_IOAS_MAP, () => 0);
  r.set(NR.IOMMU_IOAS_UNMAP, (a) => {
    const v = iommu_ioas_unmap.decode(buf(a));
    iommu_ioas_unmap.encode(v, buf(a)); // length stays: all of it was unmapped
    return 0;
  });
  r.set(NR.IOMMU_DESTROY, () => 0);
  // --- group + container ---
  r.set(NR.VFIO_GROUP_GET_STATUS, (a) => {
    vfio_group_status.encode({ argsz: vfio_group_status.size, flags: 1 }, buf(a));
    return 0;
  });
  r.set(NR.VFIO_GET_API_VERSION, () => 0);
  r.set(NR.VFIO_CHECK_EXTENSION, (a) => (a === 3 ? 1 : 0));
  r.set(NR.VFIO_GROUP_SET_CONTAINER, () => 0);
  r.set(NR.VFIO_SET_IOMMU, () => 0);
  r.set(NR.VFIO_IOMMU_GET_INFO, (a) => {
    const chain = buildCapChain(
      [iovaRangeCap(RANGES.map((x) => ({ start: x.start, end: x.last })))],
      vfio_iommu_type1_info.size,
    );
    const info = { flags: 0x3, iova_pgsizes: 0x40201000n };
    withCaps(buf(a), vfio_iommu_type1_info, info, chain, (v, out) => vfio_iommu_type1_info.encode(v, out));
    return 0;
  });
  r.set(NR.VFIO_GROUP_GET_DEVICE_FD, (_a, _c, self) => self.newFd(`${BDF} device`));
  r.set(NR.VFIO_IOMMU_MAP_DMA, () => 0);
  r.set(NR.VFIO_IOMMU_UNMAP_DMA, () => 0);
  // --- device ---
  r.set(NR.VFIO_DEVICE_GET_INFO, (a) => {
    vfio_device_info.encode(
      { argsz: vfio_device_info.size, flags: 0x3, num_regions: 10, num_irqs: 5 },
      buf(a),
    );
    return 0;
  });
  r.set(NR.VFIO_DEVICE_GET_REGION_INFO, (a) => {
    const index = vfio_region_info.decode(buf(a)).index;
    const spec = REGIONS.get(index) ?? { flags: 0, size: 0n, caps: new Uint8Array(0) };
    const flags = spec.flags | (spec.caps.byteLength ? 0x8 : 0);
    const info = { index, flags, size: spec.size, offset: regionOffset(index) };
    withCaps(buf(a), vfio_region_info, info, spec.caps, (v, out) => vfio_region_info.encode(v, out));
    return 0;
  });
  r.set(NR.VFIO_DEVICE_GET_IRQ_INFO, (a) => {
    const index = vfio_irq_info.decode(buf(a)).index;
    const count = [1, 1, 0, 1, 1][index] ?? 0;
    vfio_irq_info.encode({ argsz: vfio_irq_info.size, flags: count ? 0x9 : 0, index, count }, buf(a));
    return 0;
  });
  r.set(NR.VFIO_DEVICE_SET_IRQS, () => 0);
  r.set(NR.VFIO_DEVICE_RESET, () => 0);
  r.set(NR.VFIO_DEVICE_FEATURE, (a) => {
    const flags = new DataView(buf(a).buffer).getUint32(4, true);
    if ((flags & 0xffff) === 11 && opts.dmaBuf !== false) return 0;
    throw kernelError('ENOTTY');
  });
  // Config space: edu's ids (1234:11e8), class 0x00ff00, subsystem 1af4:1100.
  const cfg = new Uint8Array(256);
  const dv = new DataView(cfg.buffer);
  dv.setUint16(0, 0x1234, true);
  dv.setUint16(2, 0x11e8, true);
  dv.setUint32(8, 0x00ff0010, true);
  dv.setUint16(0x2c, 0x1af4, true);
  dv.setUint16(0x2e, 0x1100, true);
  rec.memory.set(regionOffset(7), cfg);
}

/** A scratch /sys with one PCI device: its driver link, IOMMU group link and (optionally) vfio-dev/vfio0. */
export function scratchSysfs(opts: { cdev?: boolean; group?: number | null; driver?: string | null } = {}) {
  const root = mkdtempSync(join(tmpdir(), 'devlease-sysfs-'));
  const dir = join(root, 'bus/pci/devices', BDF);
  mkdirSync(dir, { recursive: true });
  const driver = opts.driver === undefined ? 'vfio-pci' : opts.driver;
  if (driver) symlinkSync(`../../../bus/pci/drivers/${driver}`, join(dir, 'driver'));
  const group = opts.group === undefined ? 7 : opts.group;
  if (group !== null) symlinkSync(`../../../kernel/iommu_groups/${group}`, join(dir, 'iommu_group'));
  if (opts.cdev !== false) mkdirSync(join(dir, 'vfio-dev/vfio0'), { recursive: true });
  return { root, [Symbol.dispose]: () => rmSync(root, { recursive: true, force: true }) };
}

/** GET_IRQ_INFO answers `count` vectors of MSI-X (2) with `flags` (EVENTFD 0x1, NORESIZE 0x8), MSI (1) one. */
export function msixInfo(rec: Recorder, count: number, flags: number): void {
  const standard = rec.replies.get(NR.VFIO_DEVICE_GET_IRQ_INFO)!;
  rec.replies.set(NR.VFIO_DEVICE_GET_IRQ_INFO, (a, call, r) => {
    standard(a, call, r);
    const dv = new DataView((a as Uint8Array).buffer, (a as Uint8Array).byteOffset);
    if (dv.getUint32(8, true) === 2) {
      dv.setUint32(4, flags, true);
      dv.setUint32(12, count, true);
    }
    return 0;
  });
}

// struct vfio_irq_set { u32 argsz, flags, index, start, count; s32 data[] }
// DATA_EVENTFD 0x4 | ACTION_TRIGGER 0x20; DATA_NONE 0x1 | ACTION_TRIGGER
export const irqSet = (index: number, start: number, fds: number[]) =>
  le(
    [4, 20 + 4 * fds.length],
    [4, 0x24],
    [4, index],
    [4, start],
    [4, fds.length],
    ...fds.map((f) => [4, f] as [4, number]),
  );
