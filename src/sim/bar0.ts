// BAR0 register file (datasheet §2.1, §2.2): 32-bit register reads and
// writes dispatched onto the device. 64-bit registers are two 32-bit halves;
// an 8-byte access is the low half then the high half.

import {
  CONTROL_ENABLE,
  CONTROL_RESET,
  FAULT_LOG_ENTRIES,
  FAULT_RECORD_SIZE,
  FW_CMD_LOAD,
  ID_VALUE,
  MSIX_ENTRY_SIZE,
  Q_CTRL,
  Q_CTRL_ENABLE,
  Q_CTRL_RESET,
  Q_STATUS,
  QCFG_MAX_QUEUES,
  QCFG_STRIDE,
  REG_CONTROL,
  REG_DEVMEM_GRANULE,
  REG_DEVMEM_SIZE_MB,
  REG_FAULT_ACK,
  REG_FAULT_HEAD,
  REG_FAULT_LOG,
  REG_FW_CMD,
  REG_FW_IOVA,
  REG_FW_LEN,
  REG_FW_STATUS,
  REG_FW_VERSION,
  REG_HEARTBEAT,
  REG_ID,
  REG_MSIX_PBA,
  REG_MSIX_TABLE,
  REG_NUM_QUEUES,
  REG_QCFG,
  REG_QUEUE_STRIDE,
  REG_SCRATCH,
  REG_STATUS,
} from './datasheet.js';
import type { Sa1Device } from './device.js';

const FAULT_LOG_END = REG_FAULT_LOG + FAULT_LOG_ENTRIES * FAULT_RECORD_SIZE;
const QCFG_END = REG_QCFG + QCFG_MAX_QUEUES * QCFG_STRIDE;

export function bar0Read32(dev: Sa1Device, off: number): number {
  switch (off) {
    case REG_ID:
      return ID_VALUE;
    case REG_STATUS:
      return dev.status();
    case REG_CONTROL:
      return (dev.controlEnable ? CONTROL_ENABLE : 0) | (dev.deviceResetPending ? CONTROL_RESET : 0);
    case REG_SCRATCH:
      return dev.scratch;
    case REG_HEARTBEAT:
      return dev.firmware.heartbeat();
    case REG_NUM_QUEUES:
      return dev.options.numQueues;
    case REG_QUEUE_STRIDE:
      return dev.options.queueStride;
    case REG_DEVMEM_SIZE_MB:
      return Math.floor(dev.options.devmemSize / (1024 * 1024));
    case REG_DEVMEM_GRANULE:
      return dev.options.devmemGranule;
    case REG_FW_IOVA:
      return Number(dev.firmware.iova & 0xffffffffn);
    case REG_FW_IOVA + 4:
      return Number(dev.firmware.iova >> 32n);
    case REG_FW_LEN:
      return dev.firmware.len;
    case REG_FW_STATUS:
      return dev.firmware.status;
    case REG_FW_VERSION:
      return dev.firmware.version;
    case REG_FAULT_HEAD:
      return dev.faults.head;
    case REG_FAULT_ACK:
      return dev.faults.ack;
  }
  if (off >= REG_FAULT_LOG && off < FAULT_LOG_END) return dev.faults.read32(off - REG_FAULT_LOG);
  if (off >= REG_QCFG && off < QCFG_END) {
    const q = dev.queues[Math.floor((off - REG_QCFG) / QCFG_STRIDE)];
    if (!q) return 0;
    const within = (off - REG_QCFG) % QCFG_STRIDE;
    if (within === Q_CTRL) {
      return (q.enabled ? Q_CTRL_ENABLE : 0) | (dev.queueResetsPending.has(q.index) ? Q_CTRL_RESET : 0);
    }
    if (within === Q_STATUS) return dev.queueStatus(q);
    return q.readQcfg(within);
  }
  const table = dev.msixTable;
  if (off >= REG_MSIX_TABLE && off < REG_MSIX_TABLE + table.length) {
    return new DataView(table.buffer).getUint32(off - REG_MSIX_TABLE, true);
  }
  // MSI-X PBA: nothing is ever pending (delivery is by eventfd), so it reads 0, as does every reserved offset.
  return 0;
}

export function bar0Write32(dev: Sa1Device, off: number, v: number): void {
  const value = v >>> 0;
  switch (off) {
    case REG_CONTROL:
      dev.writeControl(value);
      return;
    case REG_SCRATCH:
      dev.scratch = value;
      return;
    case REG_FW_IOVA:
      dev.firmware.iova = (dev.firmware.iova & ~0xffffffffn) | BigInt(value);
      return;
    case REG_FW_IOVA + 4:
      dev.firmware.iova = (dev.firmware.iova & 0xffffffffn) | (BigInt(value) << 32n);
      return;
    case REG_FW_LEN:
      dev.firmware.len = value;
      return;
    case REG_FW_CMD:
      if (value === FW_CMD_LOAD && !dev.hung) dev.firmware.command();
      return;
    case REG_FAULT_ACK:
      dev.faults.ack = value;
      return;
  }
  if (off >= REG_QCFG && off < QCFG_END) {
    const q = dev.queues[Math.floor((off - REG_QCFG) / QCFG_STRIDE)];
    if (!q) return;
    const within = (off - REG_QCFG) % QCFG_STRIDE;
    if (within === Q_CTRL) dev.writeQueueControl(q, value);
    else q.writeQcfg(within, value);
    return;
  }
  const table = dev.msixTable;
  if (off >= REG_MSIX_TABLE && off < REG_MSIX_TABLE + table.length) {
    new DataView(table.buffer).setUint32(off - REG_MSIX_TABLE, value, true);
  }
  // Everything else (RO registers, the PBA, reserved space) ignores writes.
}

/** MSI-X table size in bytes for NUM_QUEUES + 1 vectors. */
export function msixTableBytes(numQueues: number): number {
  return (numQueues + 1) * MSIX_ENTRY_SIZE;
}

/** Offset inside BAR0 where the PBA starts (for tests and docs). */
export const MSIX_PBA_OFFSET = REG_MSIX_PBA;
