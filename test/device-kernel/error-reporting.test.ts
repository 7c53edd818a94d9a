// A device with its PCIe error reporting bits clear records an error in its own status and reports it to
// nobody: no AER error of it reaches vfio-pci, nor the ERR eventfd. Kernels before 6.0 left them clear on a
// device bound to vfio-pci, so the kernel backend sets them when it wires ERR (device-signals.ts). The guest
// kernels (7.3) set them themselves: the guest test (test/kernel/guest/aer.test.ts) shows an error reaching the
// broker, this one the config walk and the write.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeBits, restoreDecode } from '../../src/device/kernel/bar-restore.js';
import { enableErrorReporting } from '../../src/device/kernel/device-signals.js';

/** A config space in memory, with every write recorded. */
function configSpace(fill: (dv: DataView) => void) {
  const bytes = new Uint8Array(256);
  fill(new DataView(bytes.buffer));
  const writes: [number, number[]][] = [];
  return {
    bytes,
    writes,
    read: async (off: number, n: number) => bytes.slice(off, off + n),
    write: async (off: number, data: Uint8Array) => {
      writes.push([off, [...data]]);
      bytes.set(data, off);
    },
  };
}

const CAP_LIST = 0x10; // PCI_STATUS_CAP_LIST

test('error reporting: the PCI Express capability is found past others and its DEVCTL gets CERE|NFERE|FERE|URRE', async () => {
  const cfg = configSpace((dv) => {
    dv.setUint16(0x06, CAP_LIST, true);
    dv.setUint8(0x34, 0x40);
    dv.setUint16(0x40, 0x5001, true); // PM (0x01), next 0x50
    dv.setUint16(0x50, 0xa005, true); // MSI (0x05), next 0xa0
    dv.setUint16(0xa0, 0x0010, true); // PCI Express (0x10), the last
    dv.setUint16(0xa8, 0x2810, true); // DEVCTL: max payload and read request sizes, relaxed ordering
  });
  assert.equal(await enableErrorReporting(cfg), true);
  assert.deepEqual(cfg.writes, [[0xa8, [0x1f, 0x28]]], 'one write: the four bits set, the rest kept');
});

test('error reporting: a device with no capability list, or no PCI Express capability in a looped one, is left alone', async () => {
  const none = configSpace(() => {});
  assert.equal(await enableErrorReporting(none), false);
  const looped = configSpace((dv) => {
    dv.setUint16(0x06, CAP_LIST, true);
    dv.setUint8(0x34, 0x40);
    dv.setUint16(0x40, 0x5001, true);
    dv.setUint16(0x50, 0x4005, true); // next: back to 0x40
  });
  assert.equal(await enableErrorReporting(looped), false);
  assert.deepEqual([...none.writes, ...looped.writes], []);
});

// A fatal error resets the link after ERR: the hardware loses its BARs and decode, which vfio-pci restores at a
// command-register write enabling decode it thinks enabled (bar-restore.ts). The guest test shows the device
// decoding again (aer.test.ts, MALF_TLP); this one which write is asked, and that an intact device gets none.
test('after a reset: decode the device had at open and lost is written back; an intact device gets no write', async () => {
  const cfg = configSpace((dv) => dv.setUint16(0x04, 0x0406, true)); // MEMORY|MASTER|INTX_DISABLE
  const decode = await decodeBits(cfg);
  assert.equal(decode, 0x2, 'memory decode (no I/O)');
  assert.equal(await restoreDecode(cfg, decode), false);
  assert.deepEqual(cfg.writes, [], 'intact: nothing written');
  cfg.bytes.set([0x00, 0x04], 0x04); // the link reset: decode and bus master gone (INTx disable is vfio-pci's)
  assert.equal(await restoreDecode(cfg, decode), true);
  assert.deepEqual(cfg.writes, [[0x04, [0x02, 0x04]]], 'memory decode asked back, the rest as it reads');
});
