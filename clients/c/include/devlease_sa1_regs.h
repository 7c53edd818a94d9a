/*
 * SA-1 datasheet numbers (shared/spec/sim-accelerator.md, revision 2) for C:
 * the same names and values as src/hw/sa1/datasheet.ts, each prefixed SA1_.
 * test/clib/constants.test.ts compiles this header and checks every value
 * against the TypeScript module, so the two cannot drift apart.
 */
#ifndef DEVLEASE_SA1_REGS_H
#define DEVLEASE_SA1_REGS_H

/* --- §1 PCI identity --- */
#define SA1_VENDOR_ID 0x1234u
#define SA1_DEVICE_ID 0x5a01u
#define SA1_CLASS_CODE 0x120000u
#define SA1_REVISION 1u
#define SA1_SUBSYSTEM_VENDOR_ID 0x1234u
#define SA1_SUBSYSTEM_ID 1u
#define SA1_CONFIG_SPACE_SIZE 0x100u

/* --- §2 BARs --- */
#define SA1_BAR0_SIZE 0x40000u

/* --- §2.1 BAR0 --- */
#define SA1_REG_ID 0u
#define SA1_REG_STATUS 4u
#define SA1_REG_CONTROL 8u
#define SA1_REG_SCRATCH 0xcu
#define SA1_REG_HEARTBEAT 0x10u
#define SA1_REG_NUM_QUEUES 0x14u
#define SA1_REG_QUEUE_STRIDE 0x18u
#define SA1_REG_DEVMEM_SIZE_MB 0x1cu
#define SA1_REG_DEVMEM_GRANULE 0x20u
#define SA1_REG_FW_IOVA 0x28u /* 64-bit */
#define SA1_REG_FW_LEN 0x30u
#define SA1_REG_FW_CMD 0x34u
#define SA1_REG_FW_STATUS 0x38u
#define SA1_REG_FW_VERSION 0x3cu
#define SA1_REG_FAULT_HEAD 0x40u
#define SA1_REG_FAULT_ACK 0x44u
#define SA1_REG_FAULT_LOG 0x100u
#define SA1_REG_QCFG 0x10000u
#define SA1_QCFG_STRIDE 0x40u
#define SA1_QCFG_MAX_QUEUES 0x400u
#define SA1_REG_MSIX_TABLE 0x20000u
#define SA1_REG_MSIX_PBA 0x30000u
#define SA1_MSIX_ENTRY_SIZE 0x10u
#define SA1_ID_VALUE 0x5a010001u
#define SA1_STATUS_READY 1u
#define SA1_STATUS_FW_RUNNING 2u
#define SA1_STATUS_FAULT_PENDING 4u
#define SA1_STATUS_RESETTING 8u
#define SA1_STATUS_HUNG 0x10u
#define SA1_CONTROL_ENABLE 1u
#define SA1_CONTROL_RESET 2u
#define SA1_FW_CMD_LOAD 1u
#define SA1_FW_STATUS_NONE 0u
#define SA1_FW_STATUS_LOADING 1u
#define SA1_FW_STATUS_RUNNING 2u
#define SA1_FW_STATUS_ERROR 0x80000000u
#define SA1_FW_ERR_BAD_MAGIC 1u
#define SA1_FW_ERR_BAD_LENGTH 2u
#define SA1_FW_ERR_BAD_CHECKSUM 3u
#define SA1_FW_ERR_IOMMU_FAULT 4u
/* HEARTBEAT must advance at least every 10 ms; the simulator counts milliseconds. */
#define SA1_HEARTBEAT_PERIOD_MS 1u

/* --- §2.2 QCFG[q] --- */
#define SA1_Q_CTRL 0u
#define SA1_Q_STATUS 4u
#define SA1_Q_WIN_BASE 8u /* 64-bit */
#define SA1_Q_WIN_SIZE 0x10u /* 64-bit */
#define SA1_Q_MEM_BASE 0x18u
#define SA1_Q_MEM_SIZE 0x1cu
#define SA1_Q_VECTOR 0x20u
#define SA1_Q_INFLIGHT 0x24u
#define SA1_Q_COMPLETED 0x28u /* 64-bit */
#define SA1_Q_BYTES 0x30u /* 64-bit */
#define SA1_Q_CTRL_ENABLE 1u
#define SA1_Q_CTRL_RESET 2u
#define SA1_Q_STATUS_RUNNING 1u
#define SA1_Q_STATUS_ERROR 2u
#define SA1_Q_STATUS_IDLE 4u
#define SA1_Q_STATUS_ERROR_SHIFT 8u
#define SA1_Q_VECTOR_NONE 0xffffu

/* --- §2.3 queue page (BAR2) --- */
#define SA1_QP_SQ_BASE 0u /* 64-bit */
#define SA1_QP_SQ_SIZE 8u
#define SA1_QP_SQ_TAIL 0xcu
#define SA1_QP_SQ_HEAD 0x10u
#define SA1_QP_CQ_BASE 0x18u /* 64-bit */
#define SA1_QP_CQ_SIZE 0x20u
#define SA1_QP_CQ_HEAD 0x24u
#define SA1_QP_CQ_TAIL 0x28u
#define SA1_QP_Q_ERROR 0x2cu
#define SA1_QP_IRQ_MODE 0x30u
/* Q_NOTIFY (rev 2): RO, b0 KICK_NEEDED — the device's poller for this queue is asleep. */
#define SA1_QP_Q_NOTIFY 0x34u
#define SA1_Q_NOTIFY_KICK_NEEDED 1u
/* Bytes of the page holding registers; the rest up to QUEUE_STRIDE is reserved. */
#define SA1_QP_REGISTERS_END 0x38u
#define SA1_RING_MIN_ENTRIES 2u
#define SA1_RING_MAX_ENTRIES 0x10000u
#define SA1_SQ_BASE_ALIGN 0x40u
#define SA1_CQ_BASE_ALIGN 0x10u
#define SA1_IRQ_MODE_FLAGGED 0u
#define SA1_IRQ_MODE_EVERY 1u

/* --- §2.4 interrupts: the fault vector is NUM_QUEUES; ERR and REQ are VFIO's indexes 3 and 4 --- */

/* --- §3 descriptors --- */
#define SA1_SQ_ENTRY_SIZE 0x40u
#define SA1_CQ_ENTRY_SIZE 0x10u
#define SA1_OP_NOP 0u
#define SA1_OP_COPY 1u
#define SA1_OP_FILL 2u
#define SA1_OP_CRC32C 3u
#define SA1_OP_WRITE_IMM 4u
#define SA1_FLAG_INTR 1u
#define SA1_FLAG_SRC_DEVMEM 2u
#define SA1_FLAG_DST_DEVMEM 4u
#define SA1_FLAGS_DEFINED 7u
#define SA1_MAX_LENGTH 0x1000000u

/* --- §4 status codes, §5 fault-only codes --- */
#define SA1_ST_OK 0u
#define SA1_ST_BAD_OPCODE 1u
#define SA1_ST_BAD_LENGTH 2u
#define SA1_ST_WINDOW_VIOLATION 3u
#define SA1_ST_IOMMU_FAULT 4u
#define SA1_ST_DEVMEM_VIOLATION 5u
#define SA1_ST_ABORTED 6u
#define SA1_ST_BAD_QUEUE_CONFIG 7u
#define SA1_FAULT_FW 0x10u
#define SA1_FAULT_HANG 0x11u
#define SA1_FAULT_QUEUE_DEVICE 0xffffu
#define SA1_FAULT_RECORD_SIZE 0x10u
#define SA1_FAULT_LOG_ENTRIES 0x10u

/* --- §6 firmware image --- */
#define SA1_FW_HEADER_SIZE 0x10u
#define SA1_FW_MAX_PAYLOAD 0x1000000u

/* --- §7 IOMMU --- */
#define SA1_IOMMU_PAGE_SIZE 0x1000u
#define SA1_IOVA_BITS 0x30u
#define SA1_IOVA_LIMIT 0x1000000000000ULL

#endif
