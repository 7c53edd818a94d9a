// A lease's queue run the way a guest driver behind QEMU's vfio-user-pci runs
// it (no devlease client library): vector 0 wired to an eventfd with
// SET_IRQS, "guest RAM" mapped at IOVA 0 of the lease's view, the rings
// programmed through the mmap'ed queue page (SQ at 0, CQ at 0x1000, 4
// entries, interrupts for flagged descriptors only), NOPs rung by hand.
// Shared by the tests that play such a client (broker/lease-msix,
// upgrade/session-state); what each asserts stays in the test.
import { encodeDescriptor } from '../../src/sim/model/descriptor.js';
import { type EventFd, Mapping, type MemFd } from '../../src/sys/index.js';
import {
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_PCI_MSIX_IRQ_INDEX,
} from '../../src/vfio/uapi/vfio.js';
import type { VfioUserClient } from '../../src/vfio/user/client.js';

/** The lease device's PCI config space region. */
export const CONFIG = 7;
export const u32 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset).getUint32(at, true);
export const u16 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset).getUint16(at, true);
export const le32 = (v: number) => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
};
export const le16 = (v: number) => new Uint8Array([v & 0xff, v >> 8]);

/** The CQ's place in guest RAM (view address 0x1000). */
export const CQ_AT = 0x1000;

/**
 * Wire vector 0 to `efd`, map `ram` at view address 0 and program the queue's rings in it; returns the
 * queue page's mapping (the caller unmaps it). `ram` as a buffer is mapped without an fd (QEMU's guest RAM
 * when it is not shared): the device reaches it by DMA_READ/DMA_WRITE.
 */
export async function wireGuestQueue(
  client: VfioUserClient,
  efd: EventFd,
  ram: MemFd | Uint8Array,
): Promise<Mapping> {
  await client.setIrqs({
    flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
    index: VFIO_PCI_MSIX_IRQ_INDEX,
    start: 0,
    count: 1,
    fds: [efd.fd],
  });
  if (ram instanceof Uint8Array) await client.dmaMap({ iova: 0n, size: 65536n, flags: 3, memory: ram });
  else await client.dmaMap({ fd: ram.fd, iova: 0n, size: 65536n, flags: 3 });
  const qp = await client.regionInfo(2);
  if (!qp.fd) throw new Error('the queue page is not mmap-able (REGION_INFO gave no fd)');
  const page = Mapping.map(qp.fd, { length: Number(qp.size) });
  qp.fd.close();
  programRings(page);
  return page;
}

/** Program the rings in guest RAM through the queue page (again after a reset, which clears them). */
export function programRings(page: Mapping): void {
  const p = new DataView(page.u8.buffer, page.u8.byteOffset, 64);
  p.setBigUint64(0x00, 0n, true); // SQ_BASE
  p.setUint32(0x08, 4, true); // SQ_SIZE
  p.setBigUint64(0x18, BigInt(CQ_AT), true); // CQ_BASE
  p.setUint32(0x20, 4, true); // CQ_SIZE
  p.setUint32(0x30, 0, true); // IRQ_MODE: flagged descriptors only
}

/** Write an interrupting NOP with `tag` into SQ slot `slot` of guest RAM and ring the doorbell (SQ_TAIL). */
export function ringNop(page: Mapping, ram: Mapping | Uint8Array, slot: number, tag: bigint): void {
  encodeDescriptor(
    { opcode: 0, flags: 1 /* INTR */, tag },
    ram instanceof Uint8Array ? ram : ram.u8,
    slot * 64,
  );
  new DataView(page.u8.buffer, page.u8.byteOffset, 64).setUint32(0x0c, slot + 1, true); // SQ_TAIL
}

/** The completion in CQ slot `slot` of guest RAM. */
export const cqeAt = (ram: Mapping | Uint8Array, slot: number) => {
  const u8 = ram instanceof Uint8Array ? ram : ram.u8;
  return new DataView(u8.buffer, u8.byteOffset + CQ_AT + slot * 16, 16);
};
