// vfio-user wire constants and the message header (QEMU docs/interop/vfio-user.rst,
// sections "Commands" and "Header"). Payload layouts live in messages.ts.
import { struct } from '../struct.js';

/** Command numbers (vfio-user.rst, "Commands" table). */
export const VFIO_USER_VERSION = 1;
export const VFIO_USER_DMA_MAP = 2;
export const VFIO_USER_DMA_UNMAP = 3;
export const VFIO_USER_DEVICE_GET_INFO = 4;
export const VFIO_USER_DEVICE_GET_REGION_INFO = 5;
export const VFIO_USER_DEVICE_GET_REGION_IO_FDS = 6;
export const VFIO_USER_DEVICE_GET_IRQ_INFO = 7;
export const VFIO_USER_DEVICE_SET_IRQS = 8;
export const VFIO_USER_REGION_READ = 9;
export const VFIO_USER_REGION_WRITE = 10;
export const VFIO_USER_DMA_READ = 11;
export const VFIO_USER_DMA_WRITE = 12;
export const VFIO_USER_DEVICE_RESET = 13;
/** Withdrawn from the current spec (was VFIO_USER_DIRTY_PAGES in older libvfio-user); refused. */
export const VFIO_USER_DIRTY_PAGES = 14;
export const VFIO_USER_REGION_WRITE_MULTI = 15;
export const VFIO_USER_DEVICE_FEATURE = 16;
export const VFIO_USER_MIG_DATA_READ = 17;
export const VFIO_USER_MIG_DATA_WRITE = 18;

const COMMAND_NAMES: Record<number, string> = {
  1: 'VFIO_USER_VERSION',
  2: 'VFIO_USER_DMA_MAP',
  3: 'VFIO_USER_DMA_UNMAP',
  4: 'VFIO_USER_DEVICE_GET_INFO',
  5: 'VFIO_USER_DEVICE_GET_REGION_INFO',
  6: 'VFIO_USER_DEVICE_GET_REGION_IO_FDS',
  7: 'VFIO_USER_DEVICE_GET_IRQ_INFO',
  8: 'VFIO_USER_DEVICE_SET_IRQS',
  9: 'VFIO_USER_REGION_READ',
  10: 'VFIO_USER_REGION_WRITE',
  11: 'VFIO_USER_DMA_READ',
  12: 'VFIO_USER_DMA_WRITE',
  13: 'VFIO_USER_DEVICE_RESET',
  14: 'VFIO_USER_DIRTY_PAGES',
  15: 'VFIO_USER_REGION_WRITE_MULTI',
  16: 'VFIO_USER_DEVICE_FEATURE',
  17: 'VFIO_USER_MIG_DATA_READ',
  18: 'VFIO_USER_MIG_DATA_WRITE',
};

export function commandName(command: number): string {
  return COMMAND_NAMES[command] ?? `command ${command}`;
}

/** Header flags (vfio-user.rst, "Header": bits 0-3 type, bit 4 No_reply, bit 5 Error). */
export const VFIO_USER_F_TYPE_MASK = 0xf;
export const VFIO_USER_F_TYPE_COMMAND = 0x0;
export const VFIO_USER_F_TYPE_REPLY = 0x1;
export const VFIO_USER_F_NO_REPLY = 0x10;
export const VFIO_USER_F_ERROR = 0x20;

/** The 16-byte header that precedes every message (vfio-user.rst, "Header"). */
export const vfio_user_header = struct(
  'vfio_user_header',
  [
    ['msg_id', 'u16'],
    ['cmd', 'u16'],
    ['msg_size', 'u32'],
    ['flags', 'u32'],
    ['error_no', 'u32'],
  ] as const,
  { packed: true },
);
export const HEADER_SIZE = 16;

/** Protocol version this implementation speaks (QEMU's client proposes 0.0; see PROTOCOL.md). */
export const VFIO_USER_MAJOR = 0;
export const VFIO_USER_MINOR = 0;

/** Defaults the spec assigns to absent capabilities (vfio-user.rst, "Version", capabilities table). */
export const SPEC_DEFAULT_MAX_MSG_FDS = 1;
export const SPEC_DEFAULT_MAX_DATA_XFER_SIZE = 1048576;
export const SPEC_DEFAULT_MAX_DMA_MAPS = 65535;
export const SPEC_DEFAULT_PGSIZES = 4096;

/**
 * What devlease advertises unless told otherwise. max_data_xfer_size is below the
 * spec's 1 MiB default: it bounds the memory one message costs a connection.
 */
export const DEFAULT_MAX_MSG_FDS = 16;
export const DEFAULT_MAX_DATA_XFER_SIZE = 65536;

/** VFIO_USER_DMA_MAP flags (vfio-user.rst, "VFIO_USER_DMA_MAP"). */
export const VFIO_USER_F_DMA_REGION_READ = 1 << 0;
export const VFIO_USER_F_DMA_REGION_WRITE = 1 << 1;

/** VFIO_USER_DMA_UNMAP flags: the kernel's type1 values (include/uapi/linux/vfio.h). */
export const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0;
export const VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1;

/** Device features that are migration or dirty tracking: refused by the server (vfio-user.rst, "Device Features"). */
export const MIGRATION_FEATURES: ReadonlySet<number> = new Set([1, 2, 6, 7, 8]);
