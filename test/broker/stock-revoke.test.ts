// Revocation that a stock client survives (issue 13). QEMU's vfio-user-pci wires no REQ eventfd, so it gets
// no notice of a revoke; it maps its queue page with a plain mmap. When its lease is revoked the device still
// lets go of the slice at once (fresh memory for the queue, the session closed), but the client's old
// mapping must not fault: QEMU would die of SIGBUS, and the guest with it. A holder that wired REQ (the
// devlease client) keeps notice, deadline and a faulting mapping it reads as revoked (lifetime.test.ts).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { ClientProc, STOCK_CLIENT, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

test('revoking a stock client: the device lets go at once, the client keeps a private page and exits 0', async () => {
  const rig = await startRig({ sim: { numQueues: 1 } });
  rig.broker.leases.log = () => {};
  const clients: ClientProc[] = [];
  try {
    const stock = await ClientProc.spawn(null, STOCK_CLIENT);
    clients.push(stock);
    const { length } = await stock.call('connect', { socket: rig.socket });
    const [lease] = rig.broker.leases.all();
    assert.ok(lease, 'the stock client holds a lease');
    assert.equal(lease.reqFd, null, 'a stock client wires no REQ');
    await stock.call('write', { offset: 0x2000, value: 0x5eed });

    rig.broker.leases.revoke(lease.id, 200);
    await until('the lease to be reclaimed at its deadline', () => lease.state === 'released', 10_000);
    const rec = rig.audit.find((e) => e.event === 'released' && e.lease === lease.id);
    assert.equal(rec?.revoked, true, 'the slice was revoked, not waited for');
    assert.equal(rec?.revokedAs, 'detach', 'detached, not truncated under the client');
    await until('the client to see its session closed', () => stock.call('closed'), 10_000);
    await assert.rejects(stock.call('deviceInfo'), (err: Error & { code?: string }) => {
      // Refused by the client's closed connection itself: not a timeout, not a client that died.
      assert.equal(
        err.code,
        'ECONNRESET',
        `nothing reaches the device over the closed session: ${err.message}`,
      );
      assert.match(err.message, /connection is closed/);
      return true;
    });

    // A call that fails because the client died says how it died (SIGBUS: its mapping was truncated).
    const touch = async <T>(op: string, args: Record<string, unknown>): Promise<T> => {
      try {
        return await stock.call<T>(op, args);
      } catch (err) {
        const how = await Promise.race([stock.exited, new Promise((r) => setTimeout(r, 2000, 'alive'))]);
        throw new Error(
          `stock client ${op} failed (${(err as Error).message}); the client: ${JSON.stringify(how)}`,
        );
      }
    };
    // The old mapping still works: every page of it, read and written (a SIGBUS would end the process).
    // (Reclaim reset the queue first, which zeroed the page: the device's last act on it.)
    assert.equal(await touch('read', { offset: 0x2000 }), 0, 'the page as the queue reset left it');
    const pages = Math.ceil(length / 4096);
    assert.equal(await touch('touchAll', { value: 0xab00, from: 0x100 }), pages);
    await touch('write', { offset: 0x2000, value: 0xbeef });

    // The same queue, leased again, is on fresh memory: none of the old client's writes, before or after.
    const next = await ClientProc.spawn();
    clients.push(next);
    const info = (await next.call('connect', { socket: rig.socket })).info;
    assert.equal(info.queue, lease.resources.queue, 'the same queue, leased again');
    assert.equal(await next.call('pageRead', { offset: 0x2000 }), 0, 'fresh memory for the new holder');
    await touch('write', { offset: 0x2000, value: 0xdead });
    assert.equal(await next.call('pageRead', { offset: 0x2000 }), 0, 'the old mapping reaches nothing');
    await next.call('pageWrite', { offset: 0x2000, value: 0x1234 });
    assert.equal(await touch('read', { offset: 0x2000 }), 0xdead, 'nor does the new holder reach it');

    stock.call('exit').catch(() => undefined);
    assert.deepEqual(await stock.exited, { code: 0, signal: null }, 'the stock client was not killed');
    await next.exit();
    await until('the second lease to end', () => rig.broker.leases.all().length === 0);
  } finally {
    await Promise.all(clients.map((c) => c.kill()));
    await rig.close();
  }
});
