// BAR0 register file (datasheet §2.1, §2.2): 32-bit register reads and
// writes. 64-bit registers are two 32-bit halves; an 8-byte access is the
// low half then the high half.
//
// Every register value lives in the register file (register-file.ts), so a
// read is answered from it alone, by whichever thread holds it: the device
// in-process, or the simulator's front end without waking the device worker.
// Writes split the same way: bar0WriteDirect applies the ones that only store
// a value (SCRATCH, FW_IOVA, FW_LEN, FAULT_ACK, QCFG windows, Q_XLAT and vector,
// the MSI-X table; RO and reserved words ignore writes) and refuses the ones
// the device must act on (CONTROL, FW_CMD, Q_CTRL), which bar0Write32 runs
// on the device.

import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../../vfio/uapi/pci-regs.js';
import {
  CONTROL_ENABLE,
  CONTROL_RESET,
  FW_CMD_LOAD,
  FW_STATUS_RUNNING,
  HEARTBEAT_PERIOD_MS,
  MSIX_ENTRY_SIZE,
  Q_CTRL,
  Q_CTRL_ENABLE,
  Q_CTRL_RESET,
  Q_INFLIGHT,
  Q_MEM_BASE,
  Q_MEM_SIZE,
  Q_STATUS,
  Q_STATUS_ERROR,
  Q_STATUS_IDLE,
  Q_STATUS_RUNNING,
  Q_VECTOR,
  Q_WIN_BASE,
  Q_WIN_SIZE,
  Q_XLAT,
  QCFG_MAX_QUEUES,
  QCFG_STRIDE,
  REG_CONTROL,
  REG_FAULT_ACK,
  REG_FAULT_HEAD,
  REG_FW_CMD,
  REG_FW_IOVA,
  REG_FW_LEN,
  REG_FW_STATUS,
  REG_HEARTBEAT,
  REG_MSIX_PBA,
  REG_MSIX_TABLE,
  REG_QCFG,
  REG_SCRATCH,
  REG_STATUS,
  STATUS_FAULT_PENDING,
  STATUS_FW_RUNNING,
  STATUS_HUNG,
  STATUS_READY,
  STATUS_RESETTING,
} from './datasheet.js';
import type { Sa1Device } from './device.js';
import type { RegisterFile } from './register-file.js';

const QCFG_END = REG_QCFG + QCFG_MAX_QUEUES * QCFG_STRIDE;

/** QCFG words the owner may write while the queue is disabled (ignored while it is enabled). */
const LOCKED_WHILE_ENABLED: ReadonlySet<number> = new Set([
  Q_WIN_BASE,
  Q_WIN_BASE + 4,
  Q_WIN_SIZE,
  Q_WIN_SIZE + 4,
  Q_MEM_BASE,
  Q_MEM_SIZE,
  Q_XLAT,
  Q_XLAT + 4,
]);
/** QCFG words the owner may write at any time. */
const ALWAYS_WRITABLE: ReadonlySet<number> = new Set([Q_VECTOR]);

/**
 * STATUS: READY (reset is synchronous) or RESETTING while a stuck-reset injection holds CONTROL.RESET,
 * FW_RUNNING, FAULT_PENDING, HUNG.
 */
export function statusRegister(regs: RegisterFile): number {
  return (
    (regs.load(REG_CONTROL) & CONTROL_RESET ? STATUS_RESETTING : STATUS_READY) |
    (regs.load(REG_FW_STATUS) === FW_STATUS_RUNNING ? STATUS_FW_RUNNING : 0) |
    (regs.load(REG_FAULT_HEAD) !== regs.load(REG_FAULT_ACK) ? STATUS_FAULT_PENDING : 0) |
    (regs.hung ? STATUS_HUNG : 0)
  );
}

/** Queues may run: CONTROL.ENABLE, firmware running, not hung, bus master set. */
export function deviceCanRun(regs: RegisterFile): boolean {
  return (
    (regs.load(REG_CONTROL) & CONTROL_ENABLE) !== 0 &&
    regs.load(REG_FW_STATUS) === FW_STATUS_RUNNING &&
    !regs.hung &&
    ((regs.config[PCI_COMMAND] as number) & PCI_COMMAND_MASTER) !== 0
  );
}

/** The queue index a QCFG offset belongs to, or -1 outside QCFG or past NUM_QUEUES. */
function qcfgQueue(off: number, numQueues: number): number {
  if (off < REG_QCFG || off >= QCFG_END) return -1;
  const q = Math.floor((off - REG_QCFG) / QCFG_STRIDE);
  return q < numQueues ? q : -1;
}

/** Read one BAR0 word; `now` is the clock HEARTBEAT counts on. */
export function bar0Read32(regs: RegisterFile, off: number, numQueues: number, now: number): number {
  if (off === REG_STATUS) return statusRegister(regs);
  if (off === REG_HEARTBEAT) return regs.heartbeat(now, HEARTBEAT_PERIOD_MS);
  const q = qcfgQueue(off, numQueues);
  if (q >= 0 && (off - REG_QCFG) % QCFG_STRIDE === Q_STATUS) {
    const at = off - Q_STATUS;
    const enabled = (regs.load(at + Q_CTRL) & Q_CTRL_ENABLE) !== 0;
    const stored = regs.load(off); // ERROR and the last error code
    const error = (stored & Q_STATUS_ERROR) !== 0;
    return (
      stored |
      (enabled && !error && deviceCanRun(regs) ? Q_STATUS_RUNNING : 0) |
      (regs.load(at + Q_INFLIGHT) === 0 ? Q_STATUS_IDLE : 0)
    );
  }
  // Everything else reads as stored: RO values the device keeps current, RW values as written, and zero
  // for reserved space, QCFG past NUM_QUEUES, FW_CMD, and the PBA (delivery is by eventfd: nothing pends).
  return regs.load(off);
}

/**
 * Apply a BAR0 write that only stores a value. Returns false, having done
 * nothing, when the device itself must act on it (CONTROL, FW_CMD, Q_CTRL).
 */
export function bar0WriteDirect(regs: RegisterFile, off: number, v: number, numQueues: number): boolean {
  const value = v >>> 0;
  switch (off) {
    case REG_CONTROL:
    case REG_FW_CMD:
      return false;
    case REG_SCRATCH:
    case REG_FW_IOVA:
    case REG_FW_IOVA + 4:
    case REG_FW_LEN:
    case REG_FAULT_ACK:
      regs.store(off, value);
      return true;
  }
  const q = qcfgQueue(off, numQueues);
  if (q >= 0) {
    const within = (off - REG_QCFG) % QCFG_STRIDE;
    if (within === Q_CTRL) return false;
    const enabled = (regs.load(off - within + Q_CTRL) & Q_CTRL_ENABLE) !== 0;
    if (ALWAYS_WRITABLE.has(within) || (LOCKED_WHILE_ENABLED.has(within) && !enabled)) {
      regs.store(off, value); // Q_VECTOR too: all 32 bits (a value past the MSI-X table is no vector)
    }
    return true;
  }
  if (off >= REG_MSIX_TABLE && off < REG_MSIX_TABLE + msixTableBytes(numQueues)) regs.store(off, value);
  // Everything else (RO registers, the PBA, reserved space) ignores writes.
  return true;
}

/** The offsets whose writes the device itself may have to act on (CONTROL, FW_CMD, a Q_CTRL). */
export function bar0WriteMayReachDevice(off: number, numQueues: number): boolean {
  if (off === REG_CONTROL || off === REG_FW_CMD) return true;
  return qcfgQueue(off, numQueues) >= 0 && (off - REG_QCFG) % QCFG_STRIDE === Q_CTRL;
}

/** queueControlDirect(): the write needs the device (abort in-flight work, reset the rings). */
export const QCTRL_DEVICE = -1;
/** queueControlDirect(): the write changes nothing (0 to a queue that is disabled and not in reset). */
export const QCTRL_NOTHING = -2;

/**
 * A Q_CTRL write the front end can apply: ENABLE (no RESET) to a queue whose Q_CTRL reads 0 (disabled, no
 * reset pending). Such a queue has nothing in flight (disabling aborted it, a reset cleared it), so
 * enabling it only stores the bit; returns the queue, whose device side (its copy of the windows, latched
 * at enable) must still be told. QCTRL_NOTHING for a write of 0 to such a queue; QCTRL_DEVICE for the rest
 * (a disable of an enabled queue aborts its in-flight descriptors, a RESET clears its rings) and for
 * offsets that are no Q_CTRL.
 */
export function queueControlDirect(regs: RegisterFile, off: number, v: number, numQueues: number): number {
  const q = qcfgQueue(off, numQueues);
  if (q < 0 || (off - REG_QCFG) % QCFG_STRIDE !== Q_CTRL) return QCTRL_DEVICE;
  const value = v >>> 0;
  if (value & Q_CTRL_RESET || regs.load(off) !== 0) return QCTRL_DEVICE;
  if ((value & Q_CTRL_ENABLE) === 0) return QCTRL_NOTHING;
  regs.store(off, Q_CTRL_ENABLE);
  return q;
}

/** A BAR0 write on the device: the stored values as above, and the device's actions. */
export function bar0Write32(dev: Sa1Device, off: number, v: number): void {
  if (bar0WriteDirect(dev.regs, off, v, dev.options.numQueues)) return;
  const value = v >>> 0;
  if (off === REG_CONTROL) {
    dev.writeControl(value);
  } else if (off === REG_FW_CMD) {
    if (value === FW_CMD_LOAD && !dev.hung) dev.firmware.command();
  } else {
    const q = dev.queues[Math.floor((off - REG_QCFG) / QCFG_STRIDE)];
    if (q) dev.writeQueueControl(q, value);
  }
}

/** MSI-X table size in bytes for NUM_QUEUES + 1 vectors. */
export function msixTableBytes(numQueues: number): number {
  return (numQueues + 1) * MSIX_ENTRY_SIZE;
}

/** Offset inside BAR0 where the PBA starts (for tests and docs). */
export const MSIX_PBA_OFFSET = REG_MSIX_PBA;
