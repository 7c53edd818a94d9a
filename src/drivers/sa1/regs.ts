// SA-1 register map, as the driver sees it (../shared/spec/sim-accelerator.md §2).
// Offsets are BAR0 offsets unless named Q_* (relative to QCFG[q]) or SQ_*/CQ_*
// (relative to a queue page in BAR2).

export const SA1_VENDOR = 0x1234;
export const SA1_DEVICE = 0x5a01;
export const SA1_ID_VALUE = 0x5a01_0001;

export const BAR0 = 0;
export const BAR2 = 2;
export const BAR4 = 4;

export const REG = {
  ID: 0x000,
  STATUS: 0x004,
  CONTROL: 0x008,
  SCRATCH: 0x00c,
  HEARTBEAT: 0x010,
  NUM_QUEUES: 0x014,
  QUEUE_STRIDE: 0x018,
  DEVMEM_SIZE_MB: 0x01c,
  DEVMEM_GRANULE: 0x020,
  FW_IOVA: 0x028,
  FW_LEN: 0x030,
  FW_CMD: 0x034,
  FW_STATUS: 0x038,
  FW_VERSION: 0x03c,
  FAULT_HEAD: 0x040,
  FAULT_ACK: 0x044,
  FAULT_LOG: 0x100,
  QCFG: 0x10000,
  MSIX_TABLE: 0x20000,
  MSIX_PBA: 0x30000,
} as const;

export const STATUS = { READY: 1, FW_RUNNING: 2, FAULT_PENDING: 4, RESETTING: 8, HUNG: 16 } as const;
export const CONTROL = { ENABLE: 1, RESET: 2 } as const;
export const FW_STATUS = { NONE: 0, LOADING: 1, RUNNING: 2, ERROR: 0x8000_0000 } as const;

export const QCFG_STRIDE = 64;
export const Q = {
  CTRL: 0x00,
  STATUS: 0x04,
  WIN_BASE: 0x08,
  WIN_SIZE: 0x10,
  MEM_BASE: 0x18,
  MEM_SIZE: 0x1c,
  VECTOR: 0x20,
  INFLIGHT: 0x24,
  COMPLETED: 0x28,
  BYTES: 0x30,
} as const;
export const Q_CTRL = { ENABLE: 1, RESET: 2 } as const;
export const Q_STATUS = { RUNNING: 1, ERROR: 2, IDLE: 4 } as const;
export const Q_VECTOR_NONE = 0xffff;

/** Queue page layout (BAR2, one page per queue). */
export const QP = {
  SQ_BASE: 0x00,
  SQ_SIZE: 0x08,
  SQ_TAIL: 0x0c,
  SQ_HEAD: 0x10,
  CQ_BASE: 0x18,
  CQ_SIZE: 0x20,
  CQ_HEAD: 0x24,
  CQ_TAIL: 0x28,
  Q_ERROR: 0x2c,
  IRQ_MODE: 0x30,
} as const;

export const OPCODE = { NOP: 0, COPY: 1, FILL: 2, CRC32C: 3, WRITE_IMM: 4 } as const;
export const DESC_FLAG = { INTR: 1, SRC_DEVMEM: 2, DST_DEVMEM: 4 } as const;
export const SQE_SIZE = 64;
export const CQE_SIZE = 16;

export const STATUS_CODE = {
  OK: 0,
  BAD_OPCODE: 1,
  BAD_LENGTH: 2,
  WINDOW_VIOLATION: 3,
  IOMMU_FAULT: 4,
  DEVMEM_VIOLATION: 5,
  ABORTED: 6,
  BAD_QUEUE_CONFIG: 7,
} as const;
export type StatusName = keyof typeof STATUS_CODE;
export const STATUS_NAME: Record<number, StatusName> = Object.fromEntries(
  Object.entries(STATUS_CODE).map(([k, v]) => [v, k as StatusName]),
);
/** Fault record codes beyond the status codes (§5). */
export const FAULT_CODE = { FW_FAULT: 16, HANG: 17 } as const;
export const FAULT_RECORD_SIZE = 16;
export const FAULT_LOG_ENTRIES = 16;

export const qcfg = (q: number, field: number): number => REG.QCFG + q * QCFG_STRIDE + field;
