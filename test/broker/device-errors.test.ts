// The device's refusals reach the lease client as the device's errno and
// reason (not a generic EIO), are logged as single lines, rate-limited; a
// DMA_MAP fd the broker can see is not memory (a pipe, an empty memfd, a range
// past its end, a read-only fd for a device-writable map) is refused by the
// broker, by name, before the device is asked.
import assert from 'node:assert/strict';
import { openSync } from 'node:fs';
import { after, test } from 'node:test';
import { connect } from '../../src/client/lease.js';
import { Fd } from '../../src/sys/fd.js';
import { MemFd } from '../../src/sys/index.js';
import { VFIO_USER_F_DMA_REGION_READ, VFIO_USER_F_DMA_REGION_WRITE } from '../../src/vfio/user/protocol.js';
import { pipeSync } from '../fixtures/broker/pipe.js';
import { startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const RW = VFIO_USER_F_DMA_REGION_READ | VFIO_USER_F_DMA_REGION_WRITE;
const QUEUE_REGION = 2;

/** Everything console.warn/console.error print while `fn` runs (the server's fallback log for internal errors). */
async function consoleOutput(fn: () => Promise<void>): Promise<string[]> {
  const seen: string[] = [];
  const { warn, error } = console;
  console.warn = (...a: unknown[]) =>
    seen.push(a.map((x) => (x instanceof Error ? x.stack : String(x))).join(' '));
  console.error = console.warn;
  try {
    await fn();
  } finally {
    console.warn = warn;
    console.error = error;
  }
  return seen;
}

test("a write the device refuses reaches the client with the device's errno and reason; the log gets one rate-limited line each", async () => {
  const rig = await startRig();
  const lines: string[] = [];
  rig.broker.leases.log = (line) => lines.push(line);
  const lease = await connect({ socket: rig.socket });
  try {
    const printed = await consoleOutput(async () => {
      // SA-1 registers take 4- or 8-byte accesses only: the device answers a 2-byte write EINVAL.
      for (let i = 0; i < 20; i++) {
        const err = await lease.client.regionWrite(QUEUE_REGION, 0, Uint8Array.of(1, 2)).catch((e) => e);
        assert.equal(err.code, 'EINVAL', err.message);
        assert.equal(err.errno, 22);
        assert.match(
          err.reason,
          /REGION_WRITE region 2 \+0x0, 2 bytes: the device refused it: .*4 or 8 bytes/,
        );
      }
      const read = await lease.client.regionRead(QUEUE_REGION, 2, 2).catch((e) => e);
      assert.equal(read.code, 'EINVAL', read.message);
      assert.match(read.reason, /REGION_READ region 2 \+0x2, 2 bytes: the device refused it/);
    });
    assert.deepEqual(printed, [], 'no stack trace, no console output');
    const writes = lines.filter((l) => l.includes('REGION_WRITE'));
    assert.equal(writes.length, 5, `5 lines for 20 refusals:\n${lines.join('\n')}`);
    for (const l of lines) {
      assert.doesNotMatch(l, /\n|\bat .*\(/, 'one line, no stack');
      assert.match(
        l,
        /^lease queue-\d+ \(pid \d+\): REGION_(WRITE|READ) .*device refused with EINVAL \(22\): /,
      );
    }
    assert.equal(
      lines.filter((l) => l.includes('REGION_READ')).length,
      1,
      'each request kind has its own budget',
    );
    rig.broker.leases.refusals.flush();
    assert.match(lines.at(-1)!, /^lease queue-\d+ REGION_WRITE: suppressed 15 more line\(s\)/);
    // The refusals cost the lease nothing: a proper write still works.
    await lease.client.regionWrite(QUEUE_REGION, 0x2000, Uint8Array.of(1, 2, 3, 4));
  } finally {
    lease.close();
    await rig.close();
  }
});

test("a DMA_MAP the device refuses reaches the client with the device's errno (EEXIST), not EIO", async () => {
  const rig = await startRig();
  rig.broker.leases.log = () => {};
  const lease = await connect({ socket: rig.socket });
  try {
    const base = lease.info.iovaWindow!.base;
    using a = MemFd.create('first', { size: 4096 });
    using b = MemFd.create('second', { size: 4096 });
    await lease.client.dmaMap({ fd: a.fd, iova: base, size: 4096, flags: RW });
    // The broker keeps no overlap table of its own: the device's IOMMU refuses the second map at the same iova.
    const err = await lease.client.dmaMap({ fd: b.fd, iova: base, size: 4096, flags: RW }).catch((e) => e);
    assert.equal(err.code, 'EEXIST', err.message);
    assert.match(err.reason, /DMA_MAP \[0x[0-9a-f]+, \+0x1000\): the device refused it: .*overlaps/);
    assert.equal((await rig.sim.stats()).dmaMaps, 1);
  } finally {
    lease.close();
    await rig.close();
  }
});

test('a DMA_MAP fd that is not memory, or too small, is refused by the broker with the reason; the device never sees it', async () => {
  const rig = await startRig();
  const lines: string[] = [];
  rig.broker.leases.log = (line) => lines.push(line);
  const lease = await connect({ socket: rig.socket });
  try {
    const base = lease.info.iovaWindow!.base;
    const refused = async (fd: Fd, opts: { offset?: number; flags?: number } = {}) =>
      lease.client
        .dmaMap({ fd, iova: base, size: 4096, flags: opts.flags ?? RW, offset: opts.offset ?? 0 })
        .then(() => assert.fail('mapped'))
        .catch((e) => e);
    const printed = await consoleOutput(async () => {
      const [r, w] = pipeSync();
      try {
        const err = await refused(r);
        assert.equal(err.code, 'EBADF', err.message);
        assert.match(err.reason, /the DMA_MAP fd is a pipe, not memory/);
      } finally {
        r.close();
        w.close();
      }
      using empty = MemFd.create('empty', { size: 0 });
      const e0 = await refused(empty.fd);
      assert.equal(e0.code, 'EINVAL', e0.message);
      assert.match(e0.reason, /empty file \(0 bytes\)/);
      using small = MemFd.create('small', { size: 8192 });
      const past = await refused(small.fd, { offset: 8192 });
      assert.equal(past.code, 'EINVAL', past.message);
      assert.match(
        past.reason,
        /range \[offset 0x2000, \+0x1000\) reaches past the end of its fd \(0x2000 bytes\)/,
      );
      // A read-only description cannot back memory the device writes.
      const ro = new Fd(openSync(`/proc/self/fd/${small.fd.fd}`, 'r'));
      try {
        const e = await refused(ro);
        assert.equal(e.code, 'EACCES', e.message);
        assert.match(e.reason, /open read-only, but the map lets the device write/);
        // ...but it can back memory the device only reads.
        await lease.client.dmaMap({ fd: ro, iova: base, size: 4096, flags: VFIO_USER_F_DMA_REGION_READ });
        await lease.client.dmaUnmap({ iova: base, size: 4096 });
      } finally {
        ro.close();
      }
    });
    assert.deepEqual(printed, [], 'no stack trace, no console output');
    assert.deepEqual(lines, [], 'refusals the broker makes itself are the client’s business, not the log’s');
    assert.equal((await rig.sim.stats()).dmaMaps, 0, 'the device was never asked');
    // The broker keeps serving the lease.
    using good = MemFd.create('good', { size: 4096 });
    await lease.client.dmaMap({ fd: good.fd, iova: base, size: 4096, flags: RW });
  } finally {
    lease.close();
    await rig.close();
  }
});
