// A kernel device's part in a broker upgrade (src/broker/handover), kept
// apart from device.ts so that class reads as the Device interface it
// implements:
// - whose the device is: one carried over from the previous broker process
//   (handover.ts) is that broker's until the upgrade commits, since it may
//   yet roll back and carry on, so nothing may change the device's maps,
//   interrupts or state meanwhile (mine()); takeOver() makes it this one's;
// - what the next broker process needs to carry the device on (handover()),
//   built from the device's private parts, which the device lends here
//   (DevicePrivates) and keeps owning: the fds handed stay the device's.
// handover.ts reads a KernelDeviceHandover back into a device.

import { closedError } from '../../errors.js';
import type { EventFd } from '../../sys/eventfd.js';
import type { Fd } from '../../sys/fd.js';
import type { Device, DeviceRegion } from '../device.js';
import type { DeviceSignals } from './device-signals.js';
import type { DomainHandover, IommuDomain } from './domain.js';
import type { KernelIrqs } from './irqs.js';
import { codedError } from './sys.js';

export interface KernelDeviceHandover {
  fd: number;
  name: string;
  path: { chosen: string; reason: string };
  flags: number;
  ids: Device['ids'];
  /** The region info the old broker had read (checked against the kernel's answer again). */
  regions: { index: number; flags: number; size: bigint; offset: bigint }[];
  domain: DomainHandover;
  /** MSI/MSI-X indexes the kernel sizes once that the old broker had enabled (absent from an older broker). */
  irqsEnabled?: number[];
  /** The REQ and ERR eventfds wired to the device, by irq index (absent from an older broker: wired anew). */
  signals?: { index: number; fd: number }[];
  /** The command register's decode bits at the first open (absent from an older broker: read at adoption). */
  decode?: number;
}

/** What a device carried over by an upgrade is created with (handover.ts); a device opened here has none. */
export interface CarriedParts {
  /** false: carried over from another broker process and not yet this one's to tear down. */
  owned?: boolean;
  /** The previous broker's REQ and ERR eventfds by irq index, owned from here (watched at takeOver()). */
  signals?: Map<number, EventFd>;
  /** The decode bits the device had when the previous broker opened it (not read again). */
  decode?: number;
}

/** The parts of a KernelDevice the upgrade reads and changes: owned by the device, lent here. */
export interface DevicePrivates {
  /** The device's public face: what the handover repeats of it, and its IOMMU domain. */
  device: { path: Device['path']; flags: number; ids: Device['ids']; domain: IommuDomain };
  /** The VFIO device fd (closed by the device's close(): a handover then is refused). */
  fd: Fd;
  /** For messages, e.g. '/dev/vfio/devices/vfio0'. */
  name: string;
  /** The region info read so far. */
  regions: ReadonlyMap<number, DeviceRegion>;
  irqs: KernelIrqs;
  signals: DeviceSignals;
  /** The command register's decode bits at the first open (read then, or carried over). */
  decode(): number;
}

export class DeviceUpgrade {
  #owned: boolean;
  /** After an upgrade's commit: what became of the pinned-page accounting (takeOver(); status shows it). */
  pinnedAccounting: string | null = null;

  constructor(
    private readonly parts: DevicePrivates,
    owned: boolean,
  ) {
    this.#owned = owned;
  }

  /** The device is this process's: opened here, or carried over and taken over. */
  get owned(): boolean {
    return this.#owned;
  }

  /**
   * Adopted and not taken over: the maps, interrupts and device state are the previous broker's, which may
   * yet roll back and carry on, so nothing here may change them (reads and register writes are the driver's
   * adopt() checks).
   */
  mine(what: string): void {
    if (!this.#owned)
      throw codedError(
        'EBUSY',
        `${what} on ${this.parts.name}: the device is the previous broker's until the upgrade commits`,
      );
  }

  /** What another broker process needs to carry the device on; the fds stay the device's. */
  handover(add: (fd: Fd) => number): KernelDeviceHandover {
    const p = this.parts;
    if (p.fd.closed) throw closedError(`kernel device ${p.name}`);
    return {
      fd: add(p.fd),
      name: p.name,
      path: { ...p.device.path },
      flags: p.device.flags,
      ids: p.device.ids,
      regions: [...p.regions.values()].map((r) => ({
        index: r.index,
        flags: r.flags,
        size: r.size,
        offset: r.offset,
      })),
      domain: p.device.domain.handover(add),
      irqsEnabled: p.irqs.handover(),
      signals: p.signals.handover(add),
      decode: p.decode(),
    };
  }

  /**
   * The upgrade committed: the device is this process's. Its REQ and ERR irqs are too from here on: the
   * eventfds the previous broker handed over are watched (with what was signalled during the transfer), or,
   * from a broker that handed none, new ones wired. Returns what became of the pinned-page accounting.
   */
  takeOver(): string {
    this.#owned = true;
    void this.parts.signals.start();
    this.pinnedAccounting = this.parts.device.domain.takeAccounting();
    return this.pinnedAccounting;
  }
}
