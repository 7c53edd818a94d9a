// The SA-1 register map as the driver and the client library use it, grouped
// for readability. The numbers come from one place, ./datasheet.ts (the
// datasheet, shared/spec/sim-accelerator.md, transcribed once for the
// simulator, the driver and the client alike). Offsets are BAR0 offsets unless named Q (relative to
// QCFG[q]) or QP (relative to a queue page in BAR2).

import * as D from './datasheet.js';

export const SA1_VENDOR = D.SA1_VENDOR_ID;
export const SA1_DEVICE = D.SA1_DEVICE_ID;
export const SA1_ID_VALUE = D.ID_VALUE;

export const BAR0 = 0;
export const BAR2 = 2;
export const BAR4 = 4;

export const REG = {
  ID: D.REG_ID,
  STATUS: D.REG_STATUS,
  CONTROL: D.REG_CONTROL,
  SCRATCH: D.REG_SCRATCH,
  HEARTBEAT: D.REG_HEARTBEAT,
  NUM_QUEUES: D.REG_NUM_QUEUES,
  QUEUE_STRIDE: D.REG_QUEUE_STRIDE,
  DEVMEM_SIZE_MB: D.REG_DEVMEM_SIZE_MB,
  DEVMEM_GRANULE: D.REG_DEVMEM_GRANULE,
  FW_IOVA: D.REG_FW_IOVA,
  FW_LEN: D.REG_FW_LEN,
  FW_CMD: D.REG_FW_CMD,
  FW_STATUS: D.REG_FW_STATUS,
  FW_VERSION: D.REG_FW_VERSION,
  FAULT_HEAD: D.REG_FAULT_HEAD,
  FAULT_ACK: D.REG_FAULT_ACK,
  FAULT_LOG: D.REG_FAULT_LOG,
  QCFG: D.REG_QCFG,
  MSIX_TABLE: D.REG_MSIX_TABLE,
  MSIX_PBA: D.REG_MSIX_PBA,
} as const;

export const STATUS = {
  READY: D.STATUS_READY,
  FW_RUNNING: D.STATUS_FW_RUNNING,
  FAULT_PENDING: D.STATUS_FAULT_PENDING,
  RESETTING: D.STATUS_RESETTING,
  HUNG: D.STATUS_HUNG,
} as const;
export const CONTROL = { ENABLE: D.CONTROL_ENABLE, RESET: D.CONTROL_RESET } as const;
export const FW_STATUS = {
  NONE: D.FW_STATUS_NONE,
  LOADING: D.FW_STATUS_LOADING,
  RUNNING: D.FW_STATUS_RUNNING,
  ERROR: D.FW_STATUS_ERROR,
} as const;

export const QCFG_STRIDE = D.QCFG_STRIDE;
export const Q = {
  CTRL: D.Q_CTRL,
  STATUS: D.Q_STATUS,
  WIN_BASE: D.Q_WIN_BASE,
  WIN_SIZE: D.Q_WIN_SIZE,
  MEM_BASE: D.Q_MEM_BASE,
  MEM_SIZE: D.Q_MEM_SIZE,
  VECTOR: D.Q_VECTOR,
  INFLIGHT: D.Q_INFLIGHT,
  COMPLETED: D.Q_COMPLETED,
  BYTES: D.Q_BYTES,
  XLAT: D.Q_XLAT,
} as const;
export const Q_CTRL = { ENABLE: D.Q_CTRL_ENABLE, RESET: D.Q_CTRL_RESET } as const;
export const Q_STATUS = {
  RUNNING: D.Q_STATUS_RUNNING,
  ERROR: D.Q_STATUS_ERROR,
  IDLE: D.Q_STATUS_IDLE,
} as const;
export const Q_VECTOR_NONE = D.Q_VECTOR_NONE;

/** Queue page layout (BAR2, one page per queue). */
export const QP = {
  SQ_BASE: D.QP_SQ_BASE,
  SQ_SIZE: D.QP_SQ_SIZE,
  SQ_TAIL: D.QP_SQ_TAIL,
  SQ_HEAD: D.QP_SQ_HEAD,
  CQ_BASE: D.QP_CQ_BASE,
  CQ_SIZE: D.QP_CQ_SIZE,
  CQ_HEAD: D.QP_CQ_HEAD,
  CQ_TAIL: D.QP_CQ_TAIL,
  Q_ERROR: D.QP_Q_ERROR,
  IRQ_MODE: D.QP_IRQ_MODE,
  Q_NOTIFY: D.QP_Q_NOTIFY,
} as const;

/** Q_NOTIFY bits (rev 2). */
export const Q_NOTIFY_KICK_NEEDED = D.Q_NOTIFY_KICK_NEEDED;

export const OPCODE = {
  NOP: D.OP_NOP,
  COPY: D.OP_COPY,
  FILL: D.OP_FILL,
  CRC32C: D.OP_CRC32C,
  WRITE_IMM: D.OP_WRITE_IMM,
} as const;
export const DESC_FLAG = {
  INTR: D.FLAG_INTR,
  SRC_DEVMEM: D.FLAG_SRC_DEVMEM,
  DST_DEVMEM: D.FLAG_DST_DEVMEM,
} as const;
export const SQE_SIZE = D.SQ_ENTRY_SIZE;
export const CQE_SIZE = D.CQ_ENTRY_SIZE;

export const STATUS_CODE = {
  OK: D.ST_OK,
  BAD_OPCODE: D.ST_BAD_OPCODE,
  BAD_LENGTH: D.ST_BAD_LENGTH,
  WINDOW_VIOLATION: D.ST_WINDOW_VIOLATION,
  IOMMU_FAULT: D.ST_IOMMU_FAULT,
  DEVMEM_VIOLATION: D.ST_DEVMEM_VIOLATION,
  ABORTED: D.ST_ABORTED,
  BAD_QUEUE_CONFIG: D.ST_BAD_QUEUE_CONFIG,
} as const;
export type StatusName = keyof typeof STATUS_CODE;
export const STATUS_NAME: Record<number, StatusName> = Object.fromEntries(
  Object.entries(STATUS_CODE).map(([k, v]) => [v, k as StatusName]),
);
/** Fault record codes beyond the status codes (§5). */
export const FAULT_CODE = { FW_FAULT: D.FAULT_FW, HANG: D.FAULT_HANG } as const;
export const FAULT_RECORD_SIZE = D.FAULT_RECORD_SIZE;
export const FAULT_LOG_ENTRIES = D.FAULT_LOG_ENTRIES;

export const qcfg = (q: number, field: number): number => REG.QCFG + q * QCFG_STRIDE + field;
