// The cdev path's IOMMU side: the device fd (/dev/vfio/devices/vfioN) is
// bound to an iommufd, attached to an IOAS of its own, and DMA is mapped in
// that IOAS. Memory goes in by file (IOMMU_IOAS_MAP_FILE, Linux 6.13+: no
// mmap needed, the IOAS holds the file) when the kernel has it, otherwise
// by address (mmap the memfd, IOMMU_IOAS_MAP, keep the mmap until unmapped).

import { readFileSync } from 'node:fs';
import { DevleaseError } from '../../errors.js';
import type { Fd } from '../../sys/fd.js';
import {
  decodeIommuIovaRanges,
  IOMMU_DESTROY,
  IOMMU_IOAS_ALLOC,
  IOMMU_IOAS_CHANGE_PROCESS,
  IOMMU_IOAS_IOVA_RANGES,
  IOMMU_IOAS_MAP,
  IOMMU_IOAS_MAP_FILE,
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
  IOMMU_IOAS_UNMAP,
  iommu_destroy,
  iommu_ioas_alloc,
  iommu_ioas_change_process,
  iommu_ioas_iova_ranges,
  iommu_ioas_map,
  iommu_ioas_map_file,
  iommu_ioas_unmap,
  iommu_iova_range,
  VFIO_DEVICE_ATTACH_IOMMUFD_PT,
  VFIO_DEVICE_BIND_IOMMUFD,
  VFIO_DEVICE_DETACH_IOMMUFD_PT,
  vfio_device_attach_iommufd_pt,
  vfio_device_bind_iommufd,
  vfio_device_detach_iommufd_pt,
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
import { explain, ioctlNamed, type KernelSys } from './sys.js';

export interface IommufdFiles {
  iommufd: Fd;
  /** For messages: where the iommufd came from ('/dev/iommu', 'fd 4 (--iommufd-fd)'). */
  iommufdName: string;
  device: Fd;
  deviceName: string;
}

const errCode = (err: unknown) => (err as { code?: string }).code;

export class IommufdIoas implements IommuDomain {
  readonly transport = 'kernel-iommufd' as const;
  readonly ranges: IovaRange[];
  readonly notes: string[] = [];
  readonly devId: number;
  readonly ioasId: number;
  readonly mapFile: boolean;
  readonly #sys: KernelSys;
  readonly #f: IommufdFiles;
  readonly #dma = new DmaTable();
  #released = false;
  #closed = false;

  /**
   * Bind the device to the iommufd, give it an IOAS, read the IOVA ranges and
   * probe IOMMU_IOAS_MAP_FILE. Takes ownership of `files.iommufd` (closed on
   * failure too); `files.device` stays the caller's, bound to the iommufd
   * until it is closed.
   */
  static attach(sys: KernelSys, files: IommufdFiles): IommufdIoas {
    let ioasId = -1;
    try {
      const bind = vfio_device_bind_iommufd.encode({
        argsz: vfio_device_bind_iommufd.size,
        flags: 0,
        iommufd: files.iommufd.fd,
      });
      ioctlNamed(
        sys,
        files.device,
        'VFIO_DEVICE_BIND_IOMMUFD',
        files.deviceName,
        VFIO_DEVICE_BIND_IOMMUFD,
        bind,
      );
      const devId = vfio_device_bind_iommufd.decode(bind).out_devid;

      const alloc = iommu_ioas_alloc.encode({ size: iommu_ioas_alloc.size, flags: 0 });
      ioctlNamed(sys, files.iommufd, 'IOMMU_IOAS_ALLOC', files.iommufdName, IOMMU_IOAS_ALLOC, alloc);
      ioasId = iommu_ioas_alloc.decode(alloc).out_ioas_id;

      const attach = vfio_device_attach_iommufd_pt.encode({
        argsz: vfio_device_attach_iommufd_pt.size,
        flags: 0,
        pt_id: ioasId,
      });
      const attachName = 'VFIO_DEVICE_ATTACH_IOMMUFD_PT';
      ioctlNamed(sys, files.device, attachName, files.deviceName, VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach);

      const ranges = iovaRanges(sys, files, ioasId);
      const mapFile = probeMapFile(sys, files, ioasId);
      return new IommufdIoas(sys, files, { devId, ioasId, ranges, mapFile });
    } catch (err) {
      try {
        // Refused (EBUSY) while the device is still attached; closing the iommufd frees the IOAS then.
        if (ioasId >= 0) destroy(sys, files, ioasId);
      } catch {}
      files.iommufd.close();
      throw err;
    }
  }

  /**
   * Carry on the IOAS another broker process set up (an upgrade): same iommufd (a dup of its fd), device id
   * and IOAS id. Checks the IOAS is there with the same IOVA ranges and every handed map is still mapped.
   * Owns `iommufd` from here on (closed on failure); `device` stays the caller's.
   */
  static adopt(
    sys: KernelSys,
    h: Extract<DomainHandover, { kind: 'iommufd' }>,
    f: { iommufd: Fd; device: Fd; deviceName: string },
  ): IommufdIoas {
    const files: IommufdFiles = { ...f, iommufdName: h.iommufdName };
    try {
      const ranges = iovaRanges(sys, files, h.ioasId);
      checkRanges(`IOAS ${h.ioasId}`, h.ranges, ranges);
      const ioas = new IommufdIoas(sys, files, { ...h, ranges });
      ioas.#checkMaps(h.maps);
      for (const m of h.maps) ioas.#dma.add(m.iova, m.size, null, m.byAddress);
      return ioas;
    } catch (err) {
      f.iommufd.close();
      throw err;
    }
  }

  #checkMaps(maps: HandedMap[]): void {
    checkMapped(
      this.#sys,
      maps,
      `IOAS ${this.ioasId}`,
      (iova, user_va) => {
        const flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE;
        const arg = iommu_ioas_map.encode({
          size: iommu_ioas_map.size,
          flags,
          ioas_id: this.ioasId,
          user_va,
          length: 4096n,
          iova,
        });
        this.#sys.ioctl(this.#f.iommufd, IOMMU_IOAS_MAP, arg);
      },
      (iova) => this.unmap(iova, 4096n),
    );
  }

  handover(add: (fd: Fd) => number): DomainHandover {
    return {
      kind: 'iommufd',
      iommufd: add(this.#f.iommufd),
      iommufdName: this.#f.iommufdName,
      devId: this.devId,
      ioasId: this.ioasId,
      mapFile: this.mapFile,
      ranges: this.ranges,
      maps: this.#dma.list(),
    };
  }

  /**
   * IOMMU_IOAS_CHANGE_PROCESS: every map's pinned pages are charged to this process (its mm's pinned_vm, its
   * user's locked_vm) and uncharged from the old one. The kernel does it for MAP_FILE maps only and changes
   * nothing if it fails; what stays where is said (docs/ARCHITECTURE.md, "Upgrading the broker").
   */
  takeAccounting(): string {
    const arg = iommu_ioas_change_process.encode({ size: iommu_ioas_change_process.size, __reserved: 0 });
    try {
      this.#sys.ioctl(this.#f.iommufd, IOMMU_IOAS_CHANGE_PROCESS, arg);
      // Maps made with CAP_IPC_LOCK are charged to no limit (IOPT_PAGES_ACCOUNT_NONE): the call moves their
      // owner only, and their VmPin stays with the old process (and is taken off this one's when unmapped).
      const note = hasIpcLock()
        ? '; maps made with CAP_IPC_LOCK are charged to no limit, only their owner moved'
        : '';
      return `moved to pid ${process.pid} (IOMMU_IOAS_CHANGE_PROCESS, ${this.#dma.size} maps)${note}`;
    } catch (err) {
      const code = errCode(err) ?? 'EIO';
      const why =
        code === 'ENOTTY'
          ? 'this kernel has no IOMMU_IOAS_CHANGE_PROCESS (Linux 6.13+)'
          : code === 'EINVAL'
            ? 'some maps are by address (IOMMU_IOAS_MAP), which the kernel cannot move'
            : `IOMMU_IOAS_CHANGE_PROCESS failed: ${code}`;
      return (
        `stayed with the previous broker process: ${why}; the pages stay pinned and are uncharged from ` +
        "that process's user when unmapped here; its mm's pinned_vm went with it"
      );
    }
  }

  private constructor(
    sys: KernelSys,
    files: IommufdFiles,
    a: { devId: number; ioasId: number; ranges: IovaRange[]; mapFile: boolean },
  ) {
    this.#sys = sys;
    this.#f = files;
    this.devId = a.devId;
    this.ioasId = a.ioasId;
    this.ranges = a.ranges;
    this.mapFile = a.mapFile;
    this.notes.push(
      `IOAS ${a.ioasId}, device id ${a.devId}`,
      a.mapFile
        ? 'memory is mapped by file (IOMMU_IOAS_MAP_FILE)'
        : 'memory is mapped by address (no IOMMU_IOAS_MAP_FILE in this kernel: mmap + IOMMU_IOAS_MAP)',
    );
  }

  map(m: DmaMapping): void {
    checkMapping(m);
    const flags =
      IOMMU_IOAS_MAP_FIXED_IOVA |
      (m.read ? IOMMU_IOAS_MAP_READABLE : 0) |
      (m.write ? IOMMU_IOAS_MAP_WRITEABLE : 0);
    if (this.mapFile) {
      const arg = iommu_ioas_map_file.encode({
        size: iommu_ioas_map_file.size,
        flags,
        ioas_id: this.ioasId,
        fd: m.fd.fd,
        start: m.offset,
        length: m.size,
        iova: m.iova,
      });
      try {
        this.#sys.ioctl(this.#f.iommufd, IOMMU_IOAS_MAP_FILE, arg);
        this.#dma.add(m.iova, m.size, null);
        return;
      } catch (err) {
        // MAP_FILE takes memfds (and dma-bufs) only; any other mappable file goes in by address.
        if (errCode(err) !== 'EINVAL' && errCode(err) !== 'EOPNOTSUPP') {
          throw explain(
            err,
            `IOMMU_IOAS_MAP_FILE of iova 0x${m.iova.toString(16)} on ${this.#f.iommufdName}`,
          );
        }
      }
    }
    this.#dma.addByAddress(
      m,
      () => this.#sys.mmap(m.fd, Number(m.size), m.offset, m.write ? 'rw' : 'r'),
      (user_va) => {
        const arg = iommu_ioas_map.encode({
          size: iommu_ioas_map.size,
          flags,
          ioas_id: this.ioasId,
          user_va,
          length: m.size,
          iova: m.iova,
        });
        this.#ioctl(`IOMMU_IOAS_MAP of iova 0x${m.iova.toString(16)}`, IOMMU_IOAS_MAP, arg);
      },
    );
  }

  unmap(iova: bigint, size: bigint): void {
    const arg = iommu_ioas_unmap.encode({
      size: iommu_ioas_unmap.size,
      ioas_id: this.ioasId,
      iova,
      length: size,
    });
    const what = `IOMMU_IOAS_UNMAP of iova 0x${iova.toString(16)}`;
    this.#ioctl(what, IOMMU_IOAS_UNMAP, arg);
    // The kernel writes back how much it unmapped (length).
    this.#dma.dropUnmapped(what, iova, size, iommu_ioas_unmap.decode(arg).length);
  }

  /** Unmap every IOVA, then detach the device from the IOAS. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    const problems = this.#dma.unmapEach((iova, size) => this.unmap(iova, size));
    try {
      const detach = vfio_device_detach_iommufd_pt.encode({
        argsz: vfio_device_detach_iommufd_pt.size,
        flags: 0,
      });
      const name = 'VFIO_DEVICE_DETACH_IOMMUFD_PT';
      ioctlNamed(this.#sys, this.#f.device, name, this.#f.deviceName, VFIO_DEVICE_DETACH_IOMMUFD_PT, detach);
    } catch (err) {
      problems.push((err as Error).message);
    }
    if (problems.length) throw new Error(`releasing the IOAS: ${problems.join('; ')}`);
  }

  /** Destroy the IOAS and close the iommufd (the device fd must be closed or detached first). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      destroy(this.#sys, this.#f, this.ioasId);
    } finally {
      this.#f.iommufd.close();
    }
  }

  /** Close the iommufd and nothing else: the IOAS, its maps and the attachment are another process's. */
  abandon(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#released = true;
    this.#f.iommufd.close();
  }

  #ioctl(what: string, request: number, arg: Uint8Array): void {
    ioctlNamed(this.#sys, this.#f.iommufd, what, this.#f.iommufdName, request, arg);
  }
}

/** Whether this process has CAP_IPC_LOCK (bit 14 of CapEff in /proc/self/status). */
function hasIpcLock(): boolean {
  try {
    const m = /^CapEff:\s+([0-9a-f]+)/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? (BigInt(`0x${m[1]}`) & (1n << 14n)) !== 0n : false;
  } catch {
    return false;
  }
}

function destroy(sys: KernelSys, f: IommufdFiles, id: number): void {
  const arg = iommu_destroy.encode({ size: iommu_destroy.size, id });
  ioctlNamed(sys, f.iommufd, `IOMMU_DESTROY of IOAS ${id}`, f.iommufdName, IOMMU_DESTROY, arg);
}

/**
 * IOMMU_IOAS_IOVA_RANGES: first asked with room for none, the kernel answers
 * EMSGSIZE with the count; then again with a user buffer of that many ranges.
 */
function iovaRanges(sys: KernelSys, f: IommufdFiles, ioasId: number): IovaRange[] {
  const name = 'IOMMU_IOAS_IOVA_RANGES';
  const ask = (num: number, ptr: bigint): Uint8Array => {
    const arg = iommu_ioas_iova_ranges.encode({
      size: iommu_ioas_iova_ranges.size,
      ioas_id: ioasId,
      num_iovas: num,
      allowed_iovas: ptr,
    });
    try {
      sys.ioctl(f.iommufd, IOMMU_IOAS_IOVA_RANGES, arg);
    } catch (err) {
      if (errCode(err) !== 'EMSGSIZE') throw explain(err, `${name} on ${f.iommufdName}`);
    }
    return arg;
  };
  const count = iommu_ioas_iova_ranges.decode(ask(0, 0n)).num_iovas;
  if (count === 0) return [];
  const mem = sys.scratch(count * iommu_iova_range.size);
  try {
    const got = iommu_ioas_iova_ranges.decode(ask(count, mem.address)).num_iovas;
    if (got > count) throw new DevleaseError('EAGAIN', `${name}: the IOVA ranges changed while read`);
    return decodeIommuIovaRanges(mem.u8, got).map((r) => ({ start: r.start, last: r.last }));
  } finally {
    mem.unmap();
  }
}

/**
 * IOMMU_IOAS_MAP_FILE exists since Linux 6.13. Probed with fd -1 and one
 * page: a kernel that has it validates the flags, length and IOAS, then
 * answers EBADF; one without it answers ENOTTY. (A zero length is refused
 * with EINVAL before the fd is looked at.)
 */
function probeMapFile(sys: KernelSys, f: IommufdFiles, ioasId: number): boolean {
  const arg = iommu_ioas_map_file.encode({
    size: iommu_ioas_map_file.size,
    flags: IOMMU_IOAS_MAP_READABLE,
    ioas_id: ioasId,
    fd: -1,
    length: 4096n,
  });
  try {
    sys.ioctl(f.iommufd, IOMMU_IOAS_MAP_FILE, arg);
    return true; // cannot happen with fd -1, but it would mean the call is there
  } catch (err) {
    return errCode(err) === 'EBADF';
  }
}
