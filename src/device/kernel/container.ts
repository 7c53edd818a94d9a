// The legacy path's IOMMU side: the device's IOMMU group (/dev/vfio/<group>)
// joins a container (/dev/vfio/vfio) with the type1v2 IOMMU, the device fd
// comes from the group, and DMA is mapped by address: the memfd is mmapped
// and the mmap kept until the IOVA is unmapped (type1 pins the pages it finds
// at that address).

import { Fd } from '../../sys/fd.js';
import {
  decodeIovaRangeCap,
  findCap,
  parseCapChain,
  VFIO_API_VERSION,
  VFIO_CHECK_EXTENSION,
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_GET_API_VERSION,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_GET_STATUS,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_IOMMU_GET_INFO,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_SET_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  vfio_group_status,
  vfio_iommu_type1_dma_map,
  vfio_iommu_type1_dma_unmap,
  vfio_iommu_type1_info,
} from '../../vfio/uapi/index.js';
import type { DmaMapping, IovaRange } from '../device.js';
import {
  checkMapped,
  checkMapping,
  checkRanges,
  DmaTable,
  type DomainHandover,
  type HandedMap,
  type IommuDomain,
} from './domain.js';
import { codedError, ioctlNamed, type KernelSys } from './sys.js';

export interface ContainerPaths {
  /** /dev/vfio/<group> */
  group: string;
  /** /dev/vfio/vfio */
  container: string;
  /** The device's name in its group: its PCI address. */
  bdf: string;
}

export class Type1Container implements IommuDomain {
  readonly transport = 'kernel-container' as const;
  readonly ranges: IovaRange[];
  readonly notes: string[];
  readonly #sys: KernelSys;
  readonly #group: Fd;
  readonly #container: Fd;
  readonly #containerName: string;
  readonly #dma = new DmaTable();
  #released = false;
  #closed = false;

  /** Open the group and a container, set type1v2, and get the device fd (which the caller then owns). */
  static open(sys: KernelSys, paths: ContainerPaths): { domain: Type1Container; device: Fd } {
    const opened: Fd[] = [];
    try {
      const group = sys.open(paths.group);
      opened.push(group);
      const status = vfio_group_status.encode({ argsz: vfio_group_status.size });
      ioctlNamed(sys, group, 'VFIO_GROUP_GET_STATUS', paths.group, VFIO_GROUP_GET_STATUS, status);
      if (!(vfio_group_status.decode(status).flags & VFIO_GROUP_FLAGS_VIABLE)) {
        throw codedError(
          'EBUSY',
          `${paths.group} is not viable: every device in the IOMMU group must be bound to vfio-pci (or to no driver)`,
        );
      }

      const container = sys.open(paths.container);
      opened.push(container);
      const c = paths.container;
      const version = ioctlNamed(sys, container, 'VFIO_GET_API_VERSION', c, VFIO_GET_API_VERSION, 0);
      if (version !== VFIO_API_VERSION) {
        throw codedError('ENOTSUP', `${c} speaks VFIO API ${version}, devlease speaks ${VFIO_API_VERSION}`);
      }
      const ext = 'VFIO_CHECK_EXTENSION(VFIO_TYPE1v2_IOMMU)';
      if (ioctlNamed(sys, container, ext, c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) !== 1) {
        throw codedError('ENOTSUP', `${c} has no type1v2 IOMMU (vfio_iommu_type1 not loaded?)`);
      }

      const fdArg = new Uint8Array(4);
      new DataView(fdArg.buffer).setInt32(0, container.fd, true);
      ioctlNamed(sys, group, 'VFIO_GROUP_SET_CONTAINER', paths.group, VFIO_GROUP_SET_CONTAINER, fdArg);
      ioctlNamed(sys, container, 'VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU)', c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
      const { ranges, notes } = iommuInfo(sys, container, c);

      const name = new TextEncoder().encode(`${paths.bdf}\0`);
      const deviceFd = ioctlNamed(
        sys,
        group,
        'VFIO_GROUP_GET_DEVICE_FD',
        paths.group,
        VFIO_GROUP_GET_DEVICE_FD,
        name,
      );
      const device = new Fd(deviceFd);
      return { domain: new Type1Container(sys, group, container, c, ranges, notes), device };
    } catch (err) {
      for (const fd of opened.reverse()) fd.close();
      throw err;
    }
  }

  /**
   * Carry on the container another broker process set up (an upgrade): dups of its group and container fds.
   * Checks the IOVA ranges and that every handed map is still mapped; owns both fds (closed on failure).
   */
  static adopt(
    sys: KernelSys,
    h: Extract<DomainHandover, { kind: 'container' }>,
    group: Fd,
    container: Fd,
  ): Type1Container {
    try {
      const { ranges } = iommuInfo(sys, container, h.containerName);
      checkRanges(h.containerName, h.ranges, ranges);
      const c = new Type1Container(sys, group, container, h.containerName, ranges, h.notes);
      c.#checkMaps(h.maps);
      for (const m of h.maps) c.#dma.add(m.iova, m.size, null, m.byAddress);
      return c;
    } catch (err) {
      group.close();
      container.close();
      throw err;
    }
  }

  #checkMaps(maps: HandedMap[]): void {
    checkMapped(
      this.#sys,
      maps,
      this.#containerName,
      (iova, vaddr) => {
        const flags = VFIO_DMA_MAP_FLAG_READ;
        const arg = vfio_iommu_type1_dma_map.encode({
          argsz: vfio_iommu_type1_dma_map.size,
          flags,
          vaddr,
          iova,
          size: 4096n,
        });
        this.#sys.ioctl(this.#container, VFIO_IOMMU_MAP_DMA, arg);
      },
      (iova) => this.unmap(iova, 4096n),
    );
  }

  handover(add: (fd: Fd) => number): DomainHandover {
    return {
      kind: 'container',
      group: add(this.#group),
      container: add(this.#container),
      containerName: this.#containerName,
      ranges: this.ranges,
      notes: this.notes.slice(0, -1),
      maps: this.#dma.list(),
    };
  }

  /**
   * type1 pinned the pages of every map by address in the previous broker's mm (VFIO_IOMMU_MAP_DMA), and has no
   * call that moves that: the pins hold after it exits (DMA goes on), its locked_vm went with its mm, and an
   * unmap here unpins without uncharging anyone (vfio_lock_acct answers ESRCH for an exited mm). Maps made
   * from here on are charged to this process.
   */
  takeAccounting(): string {
    const n = this.#dma.size;
    if (!n) return 'nothing to move (no maps)';
    return (
      `stayed with the previous broker process (${n} maps): type1 pinned them by address in its mm and cannot ` +
      'move that; the pins hold, its locked_vm went with it, and unmapping here uncharges nobody'
    );
  }

  /** Close the group and container fds and nothing else: the container and its maps are another process's. */
  abandon(): void {
    this.#released = true;
    this.close();
  }

  private constructor(
    sys: KernelSys,
    group: Fd,
    container: Fd,
    containerName: string,
    ranges: IovaRange[],
    notes: string[],
  ) {
    this.#sys = sys;
    this.#group = group;
    this.#container = container;
    this.#containerName = containerName;
    this.ranges = ranges;
    this.notes = [...notes, 'memory is mapped by address (mmap + VFIO_IOMMU_MAP_DMA)'];
  }

  map(m: DmaMapping): void {
    checkMapping(m);
    this.#dma.addByAddress(
      m,
      () => this.#sys.mmap(m.fd, Number(m.size), m.offset, m.write ? 'rw' : 'r'),
      (vaddr) => {
        const arg = vfio_iommu_type1_dma_map.encode({
          argsz: vfio_iommu_type1_dma_map.size,
          flags: (m.read ? VFIO_DMA_MAP_FLAG_READ : 0) | (m.write ? VFIO_DMA_MAP_FLAG_WRITE : 0),
          vaddr,
          iova: m.iova,
          size: m.size,
        });
        this.#ioctl(`VFIO_IOMMU_MAP_DMA of iova 0x${m.iova.toString(16)}`, VFIO_IOMMU_MAP_DMA, arg);
      },
    );
  }

  unmap(iova: bigint, size: bigint): void {
    const arg = vfio_iommu_type1_dma_unmap.encode({
      argsz: vfio_iommu_type1_dma_unmap.size,
      flags: 0,
      iova,
      size,
    });
    const what = `VFIO_IOMMU_UNMAP_DMA of iova 0x${iova.toString(16)}`;
    this.#ioctl(what, VFIO_IOMMU_UNMAP_DMA, arg);
    // The kernel writes back how much it unmapped (size).
    this.#dma.dropUnmapped(what, iova, size, vfio_iommu_type1_dma_unmap.decode(arg).size);
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    const problems = this.#dma.unmapEach((iova, size) => this.unmap(iova, size));
    if (problems.length) throw new Error(`releasing the container: ${problems.join('; ')}`);
  }

  /** Closing the group takes it out of the container; the container goes with its last group. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#group.close();
    } finally {
      this.#container.close();
    }
  }

  #ioctl(what: string, request: number, arg: Uint8Array): void {
    ioctlNamed(this.#sys, this.#container, what, this.#containerName, request, arg);
  }
}

/** VFIO_IOMMU_GET_INFO, asked again with the argsz the kernel wants when its capabilities do not fit. */
function iommuInfo(sys: KernelSys, container: Fd, name: string): { ranges: IovaRange[]; notes: string[] } {
  let buf = vfio_iommu_type1_info.encode({ argsz: vfio_iommu_type1_info.size });
  ioctlNamed(sys, container, 'VFIO_IOMMU_GET_INFO', name, VFIO_IOMMU_GET_INFO, buf);
  let info = vfio_iommu_type1_info.decode(buf);
  if (info.argsz > buf.byteLength) {
    const argsz = info.argsz;
    buf = new Uint8Array(argsz);
    vfio_iommu_type1_info.encode({ argsz }, buf);
    ioctlNamed(sys, container, 'VFIO_IOMMU_GET_INFO', name, VFIO_IOMMU_GET_INFO, buf);
    info = vfio_iommu_type1_info.decode(buf);
  }
  const caps =
    info.flags & VFIO_IOMMU_INFO_CAPS
      ? parseCapChain(buf.subarray(0, Math.min(info.argsz, buf.byteLength)), info.cap_offset)
      : [];
  const cap = findCap(caps, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE);
  const pages = `IOMMU page sizes 0x${info.iova_pgsizes.toString(16)}`;
  if (!cap) {
    // Kernels before 5.4 report no ranges; 48 bits is what every x86-64 IOMMU offers.
    return {
      ranges: [{ start: 0n, last: (1n << 48n) - 1n }],
      notes: [pages, 'no IOVA-range capability: assuming 48-bit IOVAs'],
    };
  }
  return {
    ranges: decodeIovaRangeCap(cap.bytes).map((r) => ({ start: r.start, last: r.end })),
    notes: [pages],
  };
}
