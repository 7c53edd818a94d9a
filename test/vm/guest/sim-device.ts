// Runs INSIDE the vfio-user guest (test/vm), on the host's node over 9p:
// looks at the SA-1 that QEMU's vfio-user-pci presents to the guest, the way
// a guest driver would — PCI ids, BAR sizes and the MSI-X capability from
// sysfs, then BAR0 through an mmap of resource0 (QEMU traps every access and
// forwards it to the device as REGION_READ/WRITE). Prints one line,
// `DEVLEASE-VM-RESULT <json>`, which the host's test judges; it asserts
// nothing itself, so the host sees everything even when something is off.
import { closeSync, existsSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ds from '../../../src/sim/model/datasheet.js';
import { Mapping } from '../../../src/sys/index.js';

const PCI = '/sys/bus/pci/devices';
const CAP_MSIX = 0x11;
const SCRATCH_PATTERNS = [0xdeadbeef, 0x5a5a_a5a5];

const text = (dir: string, f: string): string => readFileSync(join(dir, f), 'utf8').trim();

/** Start/end/flags of each resource line: BARs 0..5, then the ROM. */
function resources(dir: string): { start: bigint; size: number; flags: number }[] {
  return text(dir, 'resource')
    .split('\n')
    .map((line) => {
      const [start, end, flags] = line.trim().split(/\s+/).map(BigInt) as [bigint, bigint, bigint];
      return { start, size: end > start ? Number(end - start + 1n) : 0, flags: Number(flags) };
    });
}

/** The MSI-X capability, found by walking the list from 0x34. */
function msix(config: Buffer): Record<string, number> | null {
  let at = config[0x34] ?? 0;
  for (let hops = 0; at >= 0x40 && hops < 48; hops++) {
    if (config[at] === CAP_MSIX) {
      const control = config.readUInt16LE(at + 2);
      const table = config.readUInt32LE(at + 4);
      const pba = config.readUInt32LE(at + 8);
      return {
        offset: at,
        vectors: (control & 0x7ff) + 1,
        tableBar: table & 7,
        tableOffset: table & ~7,
        pbaBar: pba & 7,
        pbaOffset: pba & ~7,
      };
    }
    at = config[at + 1] ?? 0;
  }
  return null;
}

function bar0(dir: string): Record<string, number | number[]> {
  // Memory decoding on, as a driver's pci_enable_device() would.
  if (existsSync(join(dir, 'enable'))) writeFileSync(join(dir, 'enable'), '1');
  const fd = openSync(join(dir, 'resource0'), 'r+');
  try {
    const m = Mapping.map(fd, { length: ds.BAR0_SIZE });
    try {
      const regs = new Uint32Array(m.buffer, 0, 64);
      const scratchBefore = regs[ds.REG_SCRATCH / 4] as number;
      const readBack = SCRATCH_PATTERNS.map((v) => {
        regs[ds.REG_SCRATCH / 4] = v;
        return regs[ds.REG_SCRATCH / 4] as number;
      });
      return {
        id: regs[ds.REG_ID / 4] as number,
        status: regs[ds.REG_STATUS / 4] as number,
        numQueues: regs[ds.REG_NUM_QUEUES / 4] as number,
        scratchBefore,
        scratchWritten: SCRATCH_PATTERNS,
        scratchReadBack: readBack,
      };
    } finally {
      m.unmap();
    }
  } finally {
    closeSync(fd);
  }
}

function main(): Record<string, unknown> {
  const found = readdirSync(PCI).filter((bdf) => {
    const d = join(PCI, bdf);
    return text(d, 'vendor') === '0x1234' && text(d, 'device') === '0x5a01';
  });
  if (found.length !== 1) return { error: `expected one 1234:5a01 device, found ${found.length}`, found };
  const bdf = found[0] as string;
  const dir = join(PCI, bdf);
  const config = readFileSync(join(dir, 'config'));
  const res = resources(dir);
  return {
    bdf,
    vendor: text(dir, 'vendor'),
    device: text(dir, 'device'),
    class: text(dir, 'class'),
    barSizes: res.slice(0, 6).map((r) => r.size),
    configBytes: config.length,
    msix: msix(config),
    // A lease has no BAR0 (the owner's registers): null says so without hiding the rest.
    bar0: existsSync(join(dir, 'resource0')) ? bar0(dir) : null,
  };
}

let result: Record<string, unknown>;
try {
  result = main();
} catch (err) {
  const e = err as NodeJS.ErrnoException;
  result = { error: `${e.message}`, code: e.code };
}
console.log(`DEVLEASE-VM-RESULT ${JSON.stringify(result)}`);
