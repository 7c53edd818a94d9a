// The SA-1 datasheet (shared/spec/sim-accelerator.md, revision 2) and
// docs/SA-1.md, typed in by hand. Nothing here is imported from src/: the
// simulator, the driver and the client all take their numbers from
// src/sim/datasheet.ts, so only an independent transcription can catch an
// error there. Section numbers are the datasheet's.

/** §1 PCI identity. */
export const PCI = {
  vendor: 0x1234,
  device: 0x5a01,
  classCode: 0x120000,
  revision: 0x01,
  subsystemVendor: 0x1234,
  subsystem: 0x0001,
  configSize: 256,
  /** docs/SA-1.md: the only capability is MSI-X at 0x40. */
  msixCapOffset: 0x40,
  msixCapId: 0x11,
} as const;

/** VFIO region and irq indexes the datasheet names (vfio.h numbering). */
export const REGION = { bar0: 0, bar2: 2, bar4: 4, config: 7 } as const;
export const IRQ = { intx: 0, msi: 1, msix: 2, err: 3, req: 4 } as const;

/** §2 BARs and the configurable defaults. */
export const BAR0_SIZE = 256 * 1024;
export const DEFAULTS = {
  numQueues: 64,
  queueStride: 65536,
  devmemSize: 64 * 1024 * 1024,
  devmemGranule: 1024 * 1024,
} as const;

/** §2.1 BAR0 register map. */
export const BAR0 = {
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
export const ID_VALUE = 0x5a01_0001;
export const QCFG_STRIDE = 64;
export const MSIX_ENTRY_SIZE = 16;

export const STATUS = { READY: 1, FW_RUNNING: 2, FAULT_PENDING: 4, RESETTING: 8, HUNG: 16 } as const;
export const CONTROL = { ENABLE: 1, RESET: 2 } as const;
export const FW_STATUS = {
  NONE: 0,
  LOADING: 1,
  RUNNING: 2,
  BAD_MAGIC: 0x8000_0001,
  BAD_LENGTH: 0x8000_0002,
  BAD_CHECKSUM: 0x8000_0003,
  IOMMU_FAULT: 0x8000_0004,
} as const;

/** §2.2 QCFG[q], at BAR0 0x10000 + 64·q. */
export const QCFG = {
  Q_CTRL: 0x00,
  Q_STATUS: 0x04,
  Q_WIN_BASE: 0x08,
  Q_WIN_SIZE: 0x10,
  Q_MEM_BASE: 0x18,
  Q_MEM_SIZE: 0x1c,
  Q_VECTOR: 0x20,
  Q_INFLIGHT: 0x24,
  Q_COMPLETED: 0x28,
  Q_BYTES: 0x30,
  /** Rev 2: RW, 64-bit; added to every IOVA the queue uses, after the window check; 0 = identity. */
  Q_XLAT: 0x38,
} as const;
export const Q_CTRL = { ENABLE: 1, RESET: 2 } as const;
export const Q_STATUS = { RUNNING: 1, ERROR: 2, IDLE: 4, ERROR_SHIFT: 8 } as const;
export const Q_VECTOR_NONE = 0xffff;

/** §2.3 queue page q in BAR2, at q·QUEUE_STRIDE. */
export const QPAGE = {
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
  /** Rev 2: RO, b0 KICK_NEEDED. */
  Q_NOTIFY: 0x34,
} as const;
export const Q_NOTIFY = { KICK_NEEDED: 1 } as const;
/** vfio-user.rst GET_REGION_IO_FDS sub-region types. */
export const IO_FD_TYPE = { IOEVENTFD: 0 } as const;
export const IRQ_MODE = { FLAGGED: 0, EVERY: 1 } as const;

/** §3 descriptors (64 bytes) and completions (16 bytes). */
export const SQE = {
  size: 64,
  opcode: 0,
  flags: 1,
  reserved2: 2,
  length: 4,
  src: 8,
  dst: 16,
  imm: 24,
  tag: 32,
};
export const CQE = { size: 16, tag: 0, result: 8, status: 12, phase: 14 };
export const OP = { NOP: 0, COPY: 1, FILL: 2, CRC32C: 3, WRITE_IMM: 4 } as const;
export const FLAG = { INTR: 1, SRC_DEVMEM: 2, DST_DEVMEM: 4 } as const;
export const MAX_LENGTH = 16 * 1024 * 1024;

/** §4 status codes, §5 fault-only codes and record layout. */
export const ST = {
  OK: 0,
  BAD_OPCODE: 1,
  BAD_LENGTH: 2,
  WINDOW_VIOLATION: 3,
  IOMMU_FAULT: 4,
  DEVMEM_VIOLATION: 5,
  ABORTED: 6,
  BAD_QUEUE_CONFIG: 7,
} as const;
export const FAULT = {
  FW_FAULT: 16,
  HANG: 17,
  DEVICE_QUEUE: 0xffff,
  recordSize: 16,
  logEntries: 16,
} as const;

/** §6 firmware image header. */
export const FW = { magic: 'SA1F', headerSize: 16, version: 4, length: 8, crc: 12 } as const;

/** §8 device features (vfio.h numbering). */
export const FEATURE = { DMA_BUF: 11, DMA_BUF_REVOKE: 13 } as const;

/** CRC32C check values: RFC 3720 appendix B.4, and the usual "123456789" check. */
export const CRC32C_VECTORS: readonly { name: string; data: Uint8Array; crc: number }[] = [
  { name: '32 bytes of zeroes', data: new Uint8Array(32), crc: 0x8a9136aa },
  { name: '32 bytes of ones', data: new Uint8Array(32).fill(0xff), crc: 0x62a8ab43 },
  { name: '32 incrementing bytes', data: Uint8Array.from({ length: 32 }, (_, i) => i), crc: 0x46dd794e },
  { name: '32 decrementing bytes', data: Uint8Array.from({ length: 32 }, (_, i) => 31 - i), crc: 0x113fdb5c },
  {
    name: 'iSCSI read (10) command PDU',
    // RFC 3720 B.4, four bytes a row as printed there.
    data: Uint8Array.from([
      ...[0x01, 0xc0, 0x00, 0x00],
      ...[0x00, 0x00, 0x00, 0x00],
      ...[0x00, 0x00, 0x00, 0x00],
      ...[0x00, 0x00, 0x00, 0x00],
      ...[0x14, 0x00, 0x00, 0x00],
      ...[0x00, 0x00, 0x04, 0x00],
      ...[0x00, 0x00, 0x00, 0x14],
      ...[0x00, 0x00, 0x00, 0x18],
      ...[0x28, 0x00, 0x00, 0x00],
      ...[0x00, 0x00, 0x00, 0x00],
      ...[0x02, 0x00, 0x00, 0x00],
      ...[0x00, 0x00, 0x00, 0x00],
    ]),
    crc: 0xd9963a56,
  },
  { name: '"123456789"', data: new TextEncoder().encode('123456789'), crc: 0xe3069283 },
];
