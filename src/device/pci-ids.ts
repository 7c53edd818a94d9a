// PCI identity from the first 48 bytes of a type-0 config header.

export interface PciIds {
  vendor: number;
  device: number;
  subsystemVendor: number;
  subsystem: number;
  classCode: number;
}

export async function readPciIds(
  read: (offset: number, count: number) => Promise<Uint8Array>,
): Promise<PciIds> {
  const b = await read(0, 0x30);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    vendor: dv.getUint16(0x00, true),
    device: dv.getUint16(0x02, true),
    classCode: dv.getUint32(0x08, true) >>> 8,
    subsystemVendor: dv.getUint16(0x2c, true),
    subsystem: dv.getUint16(0x2e, true),
  };
}
