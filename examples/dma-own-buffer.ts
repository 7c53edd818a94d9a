// DMA into the client's own buffer: the device writes memory this process
// allocated (a memfd), through the IOMMU mapping the broker made for it.
import { connect, Sa1Queue } from 'devlease/client';

await using lease = await connect({
  socket: process.argv[2] ?? '/run/devlease/sa1/queue.sock',
  deferSetup: true,
});
const queue = await Sa1Queue.create(lease);

// Our buffer, mapped inside our lease's IOVA window. The device sees it at `buf.iova`.
const buf = await lease.dma.alloc(64 * 1024);
console.log(
  `window base 0x${lease.info.iovaWindow!.base.toString(16)}, buffer at iova 0x${buf.iova.toString(16)}`,
);

// FILL writes a repeating 8-byte pattern; WRITE_IMM stores one 8-byte value.
await queue.fill(buf.iova, 4096, 0x1122334455667788n);
await queue.writeImm(buf.iova + 8192n, 0xfeedfacecafebeefn);

const view = new DataView(buf.buffer);
const pattern = view.getBigUint64(0, true);
const imm = view.getBigUint64(8192, true);
console.log(`pattern 0x${pattern.toString(16)}, immediate 0x${imm.toString(16)}`);
if (pattern !== 0x1122334455667788n || imm !== 0xfeedfacecafebeefn) process.exit(1);

// Unmap it from the device (through the broker) and from this process.
await buf.free();
