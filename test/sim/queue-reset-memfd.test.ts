// A queue reset zeroes the reserved part of the queue page (datasheet §2.3) on the simulator's real slice
// backing (a memfd per page) by punching a hole: what a client stored there reads zero through the client's
// own mapping too, the registers are reset as before, and a page never used stays unallocated.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as ds from '../../src/sim/model/datasheet.js';
import { Sa1Device } from '../../src/sim/model/device.js';
import { MemfdBacking } from '../../src/sim/model/memfd-backing.js';
import { resolveOptions } from '../../src/sim/model/options.js';
import { Mapping } from '../../src/sys/index.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { BAR0, qcfg, w32 } from './helpers/driver.js';

test('a queue reset on memfd pages zeroes the reserved part in the client mapping too', async () => {
  const leakCheck = trackFdLeaks();
  const options = resolveOptions({ numQueues: 2, devmemSize: 1 << 20, devmemGranule: 1 << 16 });
  const backing = new MemfdBacking(options);
  const dev = new Sa1Device(options, backing, { interrupt: () => {}, now: () => 0 });
  const bus = {
    read: async (r: number, o: number, c: number) => dev.regionRead(r, o, c),
    write: async (r: number, o: number, d: Uint8Array) => dev.regionWrite(r, o, d),
    until: async () => {},
  };
  const fd = backing.open({ kind: 'queue', index: 1 }, false);
  const client = Mapping.map(fd, { length: options.queueStride, offset: 0 });
  try {
    const stride = options.queueStride;
    assert.ok(stride > 4096, 'the page spans more than one memory page');
    // What a client may store: an RW register, reserved bytes in the first memory page and in a later one.
    const dv = new DataView(client.u8.buffer, client.u8.byteOffset, client.u8.byteLength);
    dv.setUint32(ds.QP_SQ_TAIL, 7, true);
    for (const at of [0x100, 0xffc, 0x1000, stride - 4]) dv.setUint32(at, 0xdeadbeef, true);
    await w32(bus, BAR0, qcfg(1, ds.Q_CTRL), ds.Q_CTRL_RESET);
    for (const at of [ds.QP_SQ_TAIL, 0x100, 0xffc, 0x1000, stride - 4]) {
      assert.equal(dv.getUint32(at, true), 0, `the client reads 0 at 0x${at.toString(16)} after the reset`);
      assert.equal(
        new DataView(backing.pages[1]!.buffer).getUint32(at, true),
        0,
        `the device reads 0 at 0x${at.toString(16)}`,
      );
    }
    // The page stays usable: a later store is seen by both sides.
    dv.setUint32(0x2000, 5, true);
    assert.equal(new DataView(backing.pages[1]!.buffer).getUint32(0x2000, true), 5);
  } finally {
    client.unmap();
    fd.close();
    backing.close();
  }
  await leakCheck();
});
