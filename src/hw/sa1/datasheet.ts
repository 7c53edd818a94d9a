// Numbers from the SA-1 datasheet (/work/shared/spec/sim-accelerator.md),
// one name per register, bit and code. The one home of SA-1 knowledge: the
// simulator (src/sim), the driver (src/drivers/sa1), the client library and
// the demo all import it from here (src/sim/datasheet.ts re-exports it), and
// test/sim/conformance checks it against a transcription of its own.

// --- §1 PCI identity ---
export const SA1_VENDOR_ID = 0x1234;
export const SA1_DEVICE_ID = 0x5a01;
export const SA1_CLASS_CODE = 0x120000;
export const SA1_REVISION = 0x01;
export const SA1_SUBSYSTEM_VENDOR_ID = 0x1234;
export const SA1_SUBSYSTEM_ID = 0x0001;
export const CONFIG_SPACE_SIZE = 256;

// --- §2 BARs ---
export const BAR0_SIZE = 256 * 1024;
/** Register accesses (BAR0, BAR2) are 4 or 8 bytes, naturally aligned. */
export const REGISTER_WIDTHS: readonly number[] = [4, 8];

// --- §2.1 BAR0 ---
export const REG_ID = 0x000;
export const REG_STATUS = 0x004;
export const REG_CONTROL = 0x008;
export const REG_SCRATCH = 0x00c;
export const REG_HEARTBEAT = 0x010;
export const REG_NUM_QUEUES = 0x014;
export const REG_QUEUE_STRIDE = 0x018;
export const REG_DEVMEM_SIZE_MB = 0x01c;
export const REG_DEVMEM_GRANULE = 0x020;
export const REG_FW_IOVA = 0x028; // 64-bit
export const REG_FW_LEN = 0x030;
export const REG_FW_CMD = 0x034;
export const REG_FW_STATUS = 0x038;
export const REG_FW_VERSION = 0x03c;
export const REG_FAULT_HEAD = 0x040;
export const REG_FAULT_ACK = 0x044;
export const REG_FAULT_LOG = 0x100;
export const REG_QCFG = 0x10000;
export const QCFG_STRIDE = 64;
export const QCFG_MAX_QUEUES = 1024;
export const REG_MSIX_TABLE = 0x20000;
export const REG_MSIX_PBA = 0x30000;
export const MSIX_ENTRY_SIZE = 16;

export const ID_VALUE = 0x5a01_0001;

export const STATUS_READY = 1 << 0;
export const STATUS_FW_RUNNING = 1 << 1;
export const STATUS_FAULT_PENDING = 1 << 2;
export const STATUS_RESETTING = 1 << 3;
export const STATUS_HUNG = 1 << 4;

export const CONTROL_ENABLE = 1 << 0;
export const CONTROL_RESET = 1 << 1;

export const FW_CMD_LOAD = 1;
export const FW_STATUS_NONE = 0;
export const FW_STATUS_LOADING = 1;
export const FW_STATUS_RUNNING = 2;
export const FW_STATUS_ERROR = 0x8000_0000;
export const FW_ERR_BAD_MAGIC = 1;
export const FW_ERR_BAD_LENGTH = 2;
export const FW_ERR_BAD_CHECKSUM = 3;
export const FW_ERR_IOMMU_FAULT = 4;

/** HEARTBEAT must advance at least every 10 ms; the simulator counts milliseconds. */
export const HEARTBEAT_PERIOD_MS = 1;

// --- §2.2 QCFG[q] ---
export const Q_CTRL = 0x00;
export const Q_STATUS = 0x04;
export const Q_WIN_BASE = 0x08; // 64-bit
export const Q_WIN_SIZE = 0x10; // 64-bit
export const Q_MEM_BASE = 0x18;
export const Q_MEM_SIZE = 0x1c;
export const Q_VECTOR = 0x20;
export const Q_INFLIGHT = 0x24;
export const Q_COMPLETED = 0x28; // 64-bit
export const Q_BYTES = 0x30; // 64-bit
/** Rev 2: added to every IOVA the queue uses, after the window check (0 = identity). */
export const Q_XLAT = 0x38; // 64-bit

export const Q_CTRL_ENABLE = 1 << 0;
export const Q_CTRL_RESET = 1 << 1;
export const Q_STATUS_RUNNING = 1 << 0;
export const Q_STATUS_ERROR = 1 << 1;
export const Q_STATUS_IDLE = 1 << 2;
export const Q_STATUS_ERROR_SHIFT = 8;
export const Q_VECTOR_NONE = 0xffff;

// --- §2.3 queue page (BAR2) ---
export const QP_SQ_BASE = 0x00; // 64-bit
export const QP_SQ_SIZE = 0x08;
export const QP_SQ_TAIL = 0x0c;
export const QP_SQ_HEAD = 0x10;
export const QP_CQ_BASE = 0x18; // 64-bit
export const QP_CQ_SIZE = 0x20;
export const QP_CQ_HEAD = 0x24;
export const QP_CQ_TAIL = 0x28;
export const QP_Q_ERROR = 0x2c;
export const QP_IRQ_MODE = 0x30;
/** Q_NOTIFY (rev 2): RO, b0 KICK_NEEDED — the device's poller for this queue is asleep. */
export const QP_Q_NOTIFY = 0x34;
export const Q_NOTIFY_KICK_NEEDED = 1 << 0;
/** Bytes of the page holding registers; the rest up to QUEUE_STRIDE is reserved. */
export const QP_REGISTERS_END = 0x38;

export const RING_MIN_ENTRIES = 2;
export const RING_MAX_ENTRIES = 65536;
export const SQ_BASE_ALIGN = 64;
export const CQ_BASE_ALIGN = 16;
export const IRQ_MODE_FLAGGED = 0;
export const IRQ_MODE_EVERY = 1;

// --- §2.4 interrupts: the fault vector is NUM_QUEUES; ERR and REQ are VFIO's indexes 3 and 4 ---

// --- §3 descriptors ---
export const SQ_ENTRY_SIZE = 64;
export const CQ_ENTRY_SIZE = 16;
export const OP_NOP = 0;
export const OP_COPY = 1;
export const OP_FILL = 2;
export const OP_CRC32C = 3;
export const OP_WRITE_IMM = 4;
export const FLAG_INTR = 1 << 0;
export const FLAG_SRC_DEVMEM = 1 << 1;
export const FLAG_DST_DEVMEM = 1 << 2;
export const FLAGS_DEFINED = FLAG_INTR | FLAG_SRC_DEVMEM | FLAG_DST_DEVMEM;
export const MAX_LENGTH = 16 * 1024 * 1024;

// --- §4 status codes, §5 fault-only codes ---
export const ST_OK = 0;
export const ST_BAD_OPCODE = 1;
export const ST_BAD_LENGTH = 2;
export const ST_WINDOW_VIOLATION = 3;
export const ST_IOMMU_FAULT = 4;
export const ST_DEVMEM_VIOLATION = 5;
export const ST_ABORTED = 6;
export const ST_BAD_QUEUE_CONFIG = 7;
export const FAULT_FW = 16;
export const FAULT_HANG = 17;
export const FAULT_QUEUE_DEVICE = 0xffff;
export const FAULT_RECORD_SIZE = 16;
export const FAULT_LOG_ENTRIES = 16;

export const STATUS_NAMES: Readonly<Record<number, string>> = {
  0: 'OK',
  1: 'BAD_OPCODE',
  2: 'BAD_LENGTH',
  3: 'WINDOW_VIOLATION',
  4: 'IOMMU_FAULT',
  5: 'DEVMEM_VIOLATION',
  6: 'ABORTED',
  7: 'BAD_QUEUE_CONFIG',
  16: 'FW_FAULT',
  17: 'HANG',
};

// --- §6 firmware image ---
export const FW_MAGIC = 'SA1F';
export const FW_HEADER_SIZE = 16;
export const FW_MAX_PAYLOAD = 16 * 1024 * 1024;

// --- §7 IOMMU ---
export const IOMMU_PAGE_SIZE = 4096;
export const IOVA_BITS = 48;
export const IOVA_LIMIT = 2 ** IOVA_BITS;
