// A grant writes only the queue configuration registers whose value changes
// (src/drivers/sa1/qcfg-shadow.ts). Whatever was skipped must still be what
// the new lease needs: a lease after one with device memory gets none, and a
// grant after a whole-device reset (which puts QCFG back to its power-on
// values) programs the queue's window again.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { adminRequest } from '../../src/cli/admin.js';
import { BAR0, Q, qcfg } from '../../src/hw/sa1/regs.js';
import { ClientProc, type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

/** Lease the (only) queue in a new client process, run one NOP through it, and keep the lease. */
async function leaseAndNop(rig: Rig, request: Record<string, unknown> = {}) {
  const c = await ClientProc.spawn();
  const { info } = await c.call('connect', { socket: rig.socket, request });
  await c.call('queue');
  const nop = await c.call('submit', { desc: { opcode: 'NOP' } });
  return { c, info, nop };
}

async function releaseAll(rig: Rig, c: ClientProc): Promise<void> {
  await c.exit();
  await until('every lease to be released', () => rig.broker.leases.all().length === 0, 10_000);
}

const reg32 = (rig: Rig, q: number, off: number) => rig.device.read32(BAR0, qcfg(q, off));
const reg64 = (rig: Rig, q: number, off: number) => rig.device.read64(BAR0, qcfg(q, off));

test('the queue granted again after a lease with device memory has no device-memory window', async () => {
  const rig = await startRig({ sim: { numQueues: 1 } });
  const clients: ClientProc[] = [];
  try {
    const a = await leaseAndNop(rig, { devmemGranules: 1 });
    clients.push(a.c);
    assert.equal(a.nop.status, 'OK');
    const q = a.info.queue as number;
    assert.ok((await reg32(rig, q, Q.MEM_SIZE)) > 0, "the first lease's device-memory window is set");
    await releaseAll(rig, a.c);

    const b = await leaseAndNop(rig);
    clients.push(b.c);
    assert.equal(b.info.queue, q, 'the same queue is leased again');
    assert.equal(b.nop.status, 'OK');
    assert.equal(await reg32(rig, q, Q.MEM_SIZE), 0, 'no device memory for a lease that asked for none');
    assert.equal(await reg32(rig, q, Q.MEM_BASE), 0);
    assert.equal(await reg32(rig, q, Q.VECTOR), q, "the queue's completions go to its own vector");
  } finally {
    await Promise.all(clients.map((c) => c.kill()));
    await rig.close();
  }
});

test('a grant after a whole-device reset programs the queue window again', async () => {
  const rig = await startRig({ sim: { numQueues: 1 } });
  const clients: ClientProc[] = [];
  try {
    const a = await leaseAndNop(rig);
    clients.push(a.c);
    assert.equal(a.nop.status, 'OK');
    const q = a.info.queue as number;
    const winSize = await reg64(rig, q, Q.WIN_SIZE);
    assert.ok(winSize > 0n, 'the lease has an IOVA window');
    await releaseAll(rig, a.c);

    // devlease reset: a recovery, whose CONTROL.RESET puts every QCFG register back to its power-on value.
    await adminRequest(join(rig.broker.dir, 'admin.sock'), { op: 'reset' });
    assert.equal(await reg64(rig, q, Q.WIN_SIZE), 0n, 'the device reset cleared the window');

    const b = await leaseAndNop(rig);
    clients.push(b.c);
    assert.equal(b.info.queue, q, 'the same queue is leased again');
    assert.equal(await reg64(rig, q, Q.WIN_SIZE), winSize, 'the window is programmed again');
    assert.equal(b.nop.status, 'OK', 'the rings in the window are reachable: the NOP completes');
  } finally {
    await Promise.all(clients.map((c) => c.kill()));
    await rig.close();
  }
});
