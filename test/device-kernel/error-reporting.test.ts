// A device with its PCIe error reporting bits clear records an error in its own status and reports it to
// nobody: no AER error of it reaches vfio-pci, nor the ERR eventfd. Kernels before 6.0 left them clear on a
// device bound to vfio-pci, so the kernel backend sets them when it wires ERR (device-signals.ts). The guest
// kernels (7.3) set them themselves: the guest test (test/kernel/guest/aer.test.ts) shows an error reaching the
// broker, this one the config walk and the write.
import assert from 'node:assert/strict';
import { test } from 'node:test';
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
