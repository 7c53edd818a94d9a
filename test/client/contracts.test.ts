// Client library contracts: disposal closes everything, double close is
// harmless, use after close and an absent broker give clear errors.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { parseLeaseInfo } from '../../src/client/info.js';
import { connect, Sa1Queue } from '../../src/index.js';
import { type Rig, startRig, until, untilReclaimed } from '../helpers/broker-rig.js';
import { describeLeak, openFds, trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
let rig: Rig;
before(async () => {
  rig = await startRig();
});
after(async () => {
  await rig?.close();
  await leakCheck();
});

/** Queue page memory (the simulator's memfds, sent to the broker here): the lease's slice, the broker's prepared ones. */
const isQueuePage = (target: string) => target.startsWith('/memfd:sa1-queue-');
const notQueuePages = (fds: Map<number, string>) => new Map([...fds].filter(([, t]) => !isQueuePage(t)));

test('disposal closes everything: fds, mappings, DMA buffers, and the broker reclaims', async () => {
  // The in-process broker makes some handles on first use (its inotify watcher; the device's queue-page
  // ioeventfds, asked for once and kept for the device connection's lifetime), and each reclaim leaves one
  // prepared slice fd for the next grant (untilReclaimed waits for it): warm it up first.
  {
    await using warm = await connect({ socket: rig.socket });
    await Sa1Queue.create(warm);
  }
  await untilReclaimed(rig);
  const fdsBefore = openFds();
  const before = fdsBefore.size;
  const mappingsBefore = countMaps();
  {
    await using lease = await connect({ socket: rig.socket });
    const q = await Sa1Queue.create(lease);
    const buf = await lease.dma.alloc(65536);
    await q.fill(buf.iova, 4096, 0xabn);
    assert.equal(buf.u8[0], 0xab);
    assert.ok(openFds().size > before, 'a live lease holds fds');
  }
  await untilReclaimed(rig);
  const fdsAfter = openFds();
  // The broker's prepared slice fd is new memory after each reclaim (another memfd): counted, not compared.
  const prepared = (fds: Map<number, string>) => [...fds.values()].filter(isQueuePage).length;
  assert.equal(
    describeLeak(notQueuePages(fdsBefore), notQueuePages(fdsAfter)),
    '',
    `every fd of the lease is closed (${before} before, ${fdsAfter.size} after)`,
  );
  assert.equal(
    prepared(fdsAfter),
    rig.device.preparedSliceFdsHeld,
    'the only queue page fds left are the ones the broker holds prepared (the lease kept none)',
  );
  assert.equal(prepared(fdsAfter), prepared(fdsBefore), 'as many prepared as before');
  assert.equal(countMaps(), mappingsBefore, 'every mapping of the lease is gone');
});

test('a double close is harmless; use after close says the lease is closed', async () => {
  const lease = await connect({ socket: rig.socket });
  const id = lease.info.lease;
  lease.close();
  lease.close();
  await lease[Symbol.asyncDispose]();
  assert.throws(() => lease.region(2), {
    code: 'ERR_DEVLEASE_CLOSED',
    message: new RegExp(`lease ${id} is closed`),
  });
  // Refused by the client library itself, before any call reaches the (closed) connection.
  await assert.rejects(lease.dma.alloc(4096), {
    code: 'ERR_DEVLEASE_CLOSED',
    message: new RegExp(`dma.alloc: lease ${id} is closed`),
  });
  await assert.rejects(lease.refreshInfo(), { code: 'ERR_DEVLEASE_CLOSED' });
  await until('the broker to reclaim', () => rig.broker.leases.all().length === 0);
});

test('no broker: connect names the socket; a broker that goes away ends the lease with disconnected', async () => {
  await assert.rejects(connect({ socket: `${rig.dir}/nobody.sock` }), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'ENOENT');
    assert.match(err.message, /no broker is listening on .*nobody\.sock/);
    return true;
  });
  const lease = await connect({ socket: rig.socket });
  const gone = new Promise<string>((resolve) => lease.once('disconnected', resolve));
  rig.broker.leases.revoke(lease.info.lease, 0, 'test: the owner takes it back');
  assert.match(await gone, /closed the session/);
  assert.equal(lease.closed, true);
  await assert.rejects(lease.nextInterrupt(), { code: 'ERR_DEVLEASE_CLOSED' });
});

test('close() rejects a pending nextInterrupt() with a named error, and leaves the stack setting alone', async () => {
  const lease = await connect({ socket: rig.socket });
  const waiting = lease.nextInterrupt();
  const limit = Error.stackTraceLimit;
  lease.close();
  // The rejection is built without a stack trace (close()'s frames say nothing to the waiter): the process's
  // own setting must come back as it was.
  assert.equal(Error.stackTraceLimit, limit);
  await assert.rejects(waiting, (err: Error & { code?: string }) => {
    assert.equal(err.name, 'LeaseError');
    assert.equal(err.code, 'ERR_DEVLEASE_CLOSED');
    assert.match(err.message, /closed while waiting for an interrupt/);
    return true;
  });
  await until('the broker to reclaim', () => rig.broker.leases.all().length === 0);
});

function countMaps(): number {
  // Lines of /proc/self/maps that map a memfd (DMA buffers, queue pages).
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes('memfd:')).length;
}

test('the lease info comes with the VERSION reply, the same as the info region holds', async () => {
  await using lease = await connect({ socket: rig.socket });
  const sent = (lease.client.serverCapabilities.raw.devlease as { info?: unknown } | undefined)?.info;
  assert.ok(sent, 'the VERSION reply carries devlease.info');
  assert.deepEqual(parseLeaseInfo(sent), await lease.refreshInfo());
  assert.deepEqual(lease.info, await lease.refreshInfo(), 'connect() took the info it was sent');
});

test("a lease's first Sa1Queue starts from the queue the grant reset; a second one resets it again", async () => {
  const driver = rig.broker.driver;
  let resets = 0;
  const resetLease = driver.resetLease.bind(driver);
  driver.resetLease = (res) => {
    resets++;
    return resetLease(res);
  };
  try {
    await using lease = await connect({ socket: rig.socket });
    const first = await Sa1Queue.create(lease, { entries: 8 });
    assert.equal(resets, 0, 'the first helper found the queue as granted and did not reset it');
    await first.nop();
    await first.close();
    // The device latched the first helper's rings at its doorbell: the second must reset to program its own.
    const second = await Sa1Queue.create(lease, { entries: 16 });
    assert.equal(resets, 1, 'the second helper reset the queue');
    assert.equal((await second.nop()).status, 'OK');
    await second.close();
  } finally {
    driver.resetLease = resetLease;
  }
});
