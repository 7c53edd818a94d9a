// The two things vfio-pci tells a device's owner by eventfd, besides the
// device's own interrupts:
//
// - REQ (VFIO_PCI_REQ_IRQ_INDEX): the kernel asks for the device back. It is
//   signalled when the device is to be unbound or removed; the kernel then
//   waits, asking again every 10 s, until every fd of the device is closed.
//   With no eventfd wired it only logs "No device request channel registered,
//   blocked until released by user" and waits for the broker to exit: an
//   operator's unbind hung for as long as the broker ran. The broker lets the
//   device go (device-loss.ts): every lease ends, the device fd closes, and
//   the unbind completes.
// - ERR (VFIO_PCI_ERR_IRQ_INDEX): the kernel's AER driver reported an
//   uncorrectable error of the device (vfio-pci's error_detected callback).
//   The kernel carries on with its own recovery (a fatal error resets the
//   link) without waiting for us; only PCIe devices have this irq. Unwired,
//   an error went unnoticed until the device misbehaved. The broker recovers
//   the device (recovery.ts): every client is told (ERR), every lease is
//   reclaimed, the driver resets the device, and grants resume.

import type { EventEmitter } from 'node:events';
import { EventFd } from '../../sys/eventfd.js';
import type { Fd } from '../../sys/fd.js';
import {
  PCI_CAP_ID_EXP,
  PCI_CAPABILITY_LIST,
  PCI_EXP_DEVCTL,
  PCI_STATUS,
  PCI_STATUS_CAP_LIST,
} from '../../vfio/uapi/pci-regs.js';
import {
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_REQ_IRQ_INDEX,
} from '../../vfio/uapi/vfio.js';
import type { Device } from '../device.js';

export type SignalDevice = Pick<Device, 'irqCount' | 'setIrqs' | 'disableIrqs' | 'read' | 'write'>;

export const RELEASE_REQUESTED =
  'the kernel asks for the device back (VFIO device request: an unbind or a removal); it is released';
export const ERROR_REPORTED =
  'the kernel reports an uncorrectable PCIe error of the device (AER, VFIO error irq); it is recovered';

export const DEVICE_SIGNALS = [
  {
    index: VFIO_PCI_REQ_IRQ_INDEX,
    name: 'device request',
    event: 'release-requested',
    why: RELEASE_REQUESTED,
  },
  { index: VFIO_PCI_ERR_IRQ_INDEX, name: 'error', event: 'error-reported', why: ERROR_REPORTED },
] as const;

export type SignalEvent = (typeof DEVICE_SIGNALS)[number]['event'];

/**
 * Emits a signal's event on `target`. ERR comes once per error: one with nobody listening yet (between the
 * device's open and the broker's start, which listens once its driver booted) is kept for the first listener.
 */
export function signalEmitter(target: EventEmitter): (event: SignalEvent, why: string) => void {
  let unheardError: string | null = null;
  target.on('newListener', (event: string) => {
    const why = unheardError;
    if (event !== 'error-reported' || why === null) return;
    unheardError = null;
    queueMicrotask(() => target.emit(event, why));
  });
  return (event, why) => {
    if (!target.emit(event, why) && event === 'error-reported') unheardError = why;
  };
}

export interface SignalHooks {
  /** A signal came: the device's event and its reason. */
  fired(event: SignalEvent, why: string): void;
  log(msg: string): void;
}

/** One of the device's REQ or ERR irqs wired to an eventfd of this process, and what to call when it fires. */
interface WiredSignal {
  index: number;
  efd: EventFd;
  fired(): void;
}

/**
 * The device's REQ and ERR eventfds while it is this process's: wired at open (or, at an upgrade's commit, the
 * ones the previous broker handed over), watched, held during an upgrade's transfer, handed over, and closed
 * after the device fd.
 */
export class DeviceSignals {
  readonly #wired: WiredSignal[] = [];
  #held = false;
  #closed = false;
  /** The previous broker's eventfds by irq index (an upgrade): watched as they are by start(). */
  readonly #handed: Map<number, EventFd>;

  constructor(
    private readonly dev: SignalDevice,
    private readonly hooks: SignalHooks,
    handed: Map<number, EventFd> = new Map(),
  ) {
    this.#handed = handed;
  }

  /**
   * Wire REQ and ERR, and have the device report its errors. A handed eventfd is watched as it is, so a signal
   * that came during the transfer, which the previous broker left unread (hold()), is heard here. Failing to wire
   * one is logged, not fatal: the device works as before, that signal unheard.
   */
  async start(): Promise<void> {
    for (const s of DEVICE_SIGNALS) {
      const fired = () => this.hooks.fired(s.event, s.why);
      const handed = this.#handed.get(s.index);
      this.#handed.delete(s.index);
      try {
        const w = handed
          ? { index: s.index, efd: handed, fired }
          : await wireSignal(this.dev, s.index, fired);
        if (w) await this.#add(w);
      } catch (err) {
        this.hooks.log(`no ${s.name} eventfd (${s.event} unheard): ${(err as Error).message}`);
      }
      if (this.#closed) return;
    }
    this.#closeHanded(); // any the device has no irq for
    // Quiet once the device closed meanwhile (the reads then fail for that alone).
    await reportErrors(this.dev, (msg) => this.#closed || this.hooks.log(msg));
  }

  /**
   * Stop reading the signals, leaving what comes in their eventfds' counts: an upgrade's transfer. An error the
   * kernel reports then is signalled once, to these eventfds; read here it would start a recovery that resets the
   * device under the new broker's adopted view, or never reach the new broker. Left in the count, it is read by
   * the broker that carries on: the new one, which watches the same eventfds from its commit, or this one again
   * after a rollback (unhold()).
   */
  hold(): void {
    this.#held = true;
    for (const w of this.#wired) w.efd.stopWatching();
  }

  /**
   * Watch the signals again (a rollback). One whose watch fails now is given up as at its wiring (#add): unwired
   * and closed, and handed over no more. Resolves once that is done; never rejects.
   */
  unhold(): Promise<void> {
    if (!this.#held) return Promise.resolve();
    this.#held = false;
    if (this.#closed) return Promise.resolve();
    const lost: Promise<void>[] = [];
    for (const w of [...this.#wired]) {
      try {
        listen(w);
      } catch (err) {
        const s = DEVICE_SIGNALS.find((d) => d.index === w.index);
        this.hooks.log(
          `index ${w.index}: its eventfd cannot be watched again (${s?.event ?? 'the signal'} unheard): ${(err as Error).message}`,
        );
        this.#wired.splice(this.#wired.indexOf(w), 1);
        lost.push(this.#giveUp(w));
      }
    }
    return Promise.all(lost).then(() => undefined);
  }

  /** The eventfds by irq index, for the next broker (the fds stay this one's). */
  handover(add: (fd: Fd) => number): { index: number; fd: number }[] {
    return this.#wired.map((w) => ({ index: w.index, fd: add(w.efd.fd) }));
  }

  /** Idempotent; the device fd is closed first (while it is open, the kernel may still signal). */
  close(): void {
    this.#closed = true;
    for (const w of this.#wired.splice(0)) w.efd.close();
    this.#closeHanded();
  }

  /**
   * Watched, unless held; closed at once if the device closed while it was being wired (its trigger went with the
   * device fd), or unwired and closed if it cannot be watched.
   */
  async #add(w: WiredSignal): Promise<void> {
    if (this.#closed) {
      w.efd.close();
      return;
    }
    try {
      listen(w);
    } catch (err) {
      await this.#giveUp(w);
      throw err;
    }
    this.#wired.push(w);
    if (this.#held) w.efd.stopWatching();
  }

  /** An eventfd that cannot be watched (at its wiring, or again after a hold): its irq unwired, then it closed. */
  async #giveUp(w: WiredSignal): Promise<void> {
    await this.#unwire(w.index);
    w.efd.close();
  }

  /**
   * Take the irq's trigger back from an eventfd this process will not read: the kernel holds its own reference
   * to the eventfd, so closing ours leaves it wired. REQ signalled into it, an unbind waits for the broker's
   * exit as with none wired, but without the kernel's "No device request channel registered" log to say why;
   * an ERR is heard by nobody. SET_IRQS with DATA_NONE, count 0 (disableIrqs) drops the trigger.
   */
  async #unwire(index: number): Promise<void> {
    try {
      await this.dev.disableIrqs(index);
      this.hooks.log(`index ${index}: its eventfd cannot be watched; unwired`);
    } catch (err) {
      // Quiet once the device closed meanwhile: its close dropped the trigger.
      if (!this.#closed)
        this.hooks.log(
          `index ${index}: its eventfd cannot be watched, nor unwired (the kernel keeps signalling it): ${(err as Error).message}`,
        );
    }
  }

  #closeHanded(): void {
    for (const efd of this.#handed.values()) efd.close();
    this.#handed.clear();
  }
}

/**
 * Watch a wired signal (again, after a hold). Level-triggered: a count left in the eventfd meanwhile is read at
 * once. The device's owner keeps the process alive; this watch alone must not.
 */
function listen(w: WiredSignal): void {
  w.efd.onReadable(() => w.fired(), 'shared'); // ERR and REQ: rarely fire
  w.efd.unref();
}

/**
 * Has the device report its errors (enableErrorReporting), when it has an ERR irq: at open, at an upgrade's
 * commit, and after a reset, which may have cleared the bits. Failing is logged: ERR stays wired, and a kernel
 * that set the bits itself (6.0 and later) still hears the device.
 */
export async function reportErrors(dev: SignalDevice, log: (msg: string) => void): Promise<void> {
  try {
    if ((await dev.irqCount(VFIO_PCI_ERR_IRQ_INDEX).catch(() => 0)) < 1) return;
    await enableErrorReporting(configAccess(dev));
  } catch (err) {
    log(`the device's error reporting bits (PCIe Device Control) not set: ${(err as Error).message}`);
  }
}

/**
 * Wire an eventfd to the irq `index` (the kernel asks again every 10 s for REQ; every error is one
 * more ERR, and one signalled before the eventfd was wired is never heard). Null when the device has no such irq
 * (not every VFIO bus driver offers one; vfio-pci offers ERR on PCIe devices only).
 */
async function wireSignal(dev: SignalDevice, index: number, fired: () => void): Promise<WiredSignal | null> {
  if ((await dev.irqCount(index).catch(() => 0)) < 1) return null;
  const efd = new EventFd();
  try {
    await dev.setIrqs(index, 0, [efd.fd]);
  } catch (err) {
    efd.close();
    throw err;
  }
  return { index, efd, fired };
}

/** Correctable, non-fatal, fatal and unsupported-request reporting: the kernel's PCI_EXP_AER_FLAGS. */
const PCI_EXP_AER_FLAGS = 0x0001 | 0x0002 | 0x0004 | 0x0008;
/** The kernel's bound on a capability walk (PCI_FIND_CAP_TTL): a looped list ends. */
const CAP_TTL = 48;

export interface ConfigAccess {
  read(offset: number, count: number): Promise<Uint8Array>;
  write(offset: number, data: Uint8Array): Promise<void>;
}

/** The device's config space through its VFIO config region (vfio-pci's virtual view where it keeps one). */
export function configAccess(dev: Pick<Device, 'read' | 'write'>): ConfigAccess {
  return {
    read: (offset, count) => dev.read(VFIO_PCI_CONFIG_REGION_INDEX, offset, count),
    write: (offset, data) => dev.write(VFIO_PCI_CONFIG_REGION_INDEX, offset, data),
  };
}

/**
 * Has the device report its errors (PCIe Device Control: CERE, NFERE, FERE, URRE), as drivers did with
 * pci_enable_pcie_error_reporting(): a device with them clear records an error in its own status and tells
 * nobody, so no AER error of it reaches the ERR irq. Since Linux 6.0 the kernel sets them on every device whose
 * AER it owns; before, each driver set its own, and vfio-pci never did, so there a device bound to it reported
 * nothing. Setting bits already set changes nothing. Returns false for a device with no PCI Express capability
 * (it has no ERR irq either).
 */
export async function enableErrorReporting(cfg: ConfigAccess): Promise<boolean> {
  const u8 = async (at: number) => (await cfg.read(at, 1))[0]!;
  const status = await cfg.read(PCI_STATUS, 2);
  if (!((status[0]! | (status[1]! << 8)) & PCI_STATUS_CAP_LIST)) return false;
  let at = (await u8(PCI_CAPABILITY_LIST)) & ~3;
  for (let ttl = CAP_TTL; at >= 0x40 && ttl > 0; ttl--) {
    if ((await u8(at)) === PCI_CAP_ID_EXP) {
      const ctl = await cfg.read(at + PCI_EXP_DEVCTL, 2);
      const value = ctl[0]! | (ctl[1]! << 8) | PCI_EXP_AER_FLAGS;
      await cfg.write(at + PCI_EXP_DEVCTL, new Uint8Array([value & 0xff, value >> 8]));
      return true;
    }
    at = (await u8(at + 1)) & ~3;
  }
  return false;
}
