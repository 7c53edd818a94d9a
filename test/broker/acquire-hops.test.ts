// Lease acquire in fewer sequential round trips (issue 16, fifth pass): the broker answers VERSION once
// policy and resources have decided the lease, while the grant's device commands are served, and holds the
// session's next request until the grant has completed; a session's device calls (MSI-X SET_IRQS, the
// rings' DMA_MAP) are pipelined to the device, replies going back in order. What a client depends on:
// a grant the device refuses after the early VERSION reply surfaces on the next request, clearly, with
// nothing left behind; and requests sent together all succeed, answered in the order sent.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { connect } from '../../src/client/index.js';
import { Sa1Queue } from '../../src/client/sa1-queue.js';
import type { LeaseResources } from '../../src/drivers/driver.js';
import { VfioError } from '../../src/errors.js';
import { EventFd, MemFd } from '../../src/sys/index.js';
import {
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
} from '../../src/vfio/uapi/vfio.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { decodeMessage } from '../../src/vfio/user/codec.js';
import { connectVfioUser } from '../../src/vfio/user/transport.js';
import { startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const GRANT_REFUSAL = 'injected: the device refused the queue ENABLE';

/** Makes the driver's device programming fail after it ran (a device refusing the grant's commands). */
function failActivate(rig: Awaited<ReturnType<typeof startRig>>): () => void {
  const driver = rig.broker.leases.driver;
  const activate = driver.activate.bind(driver);
  driver.activate = async (res: LeaseResources) => {
    await activate(res);
    throw new VfioError('EIO', GRANT_REFUSAL);
  };
  return () => {
    driver.activate = activate;
  };
}

test('a grant the device refuses after the early VERSION reply fails the next request clearly and leaks nothing', async () => {
  const rig = await startRig({ sim: { numQueues: 1 } });
  try {
    const restore = failActivate(rig);
    // The client library: its first request after VERSION carries the grant's failure; connect() rejects.
    await assert.rejects(
      connect({ socket: rig.socket, timeoutMs: 10_000 }),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, 'EIO');
        assert.match(err.message, /lease grant failed after VERSION was answered/);
        assert.match(err.message, new RegExp(GRANT_REFUSAL));
        return true;
      },
    );
    // With deferSetup, connect() resolves at VERSION; `ready` rejects the same way and the lease closes.
    const deferred = await connect({ socket: rig.socket, timeoutMs: 10_000, deferSetup: true });
    await assert.rejects(deferred.ready, /lease grant failed after VERSION was answered/);
    assert.ok(deferred.closed, 'the lease closed itself');
    await assert.rejects(Sa1Queue.create(deferred), /lease/);
    // A stock client (as QEMU): VERSION succeeds, its next request gets the error, then the session closes.
    const stock = await VfioUserClient.connect(rig.socket, { timeoutMs: 10_000 });
    const closed = new Promise<void>((r) => stock.once('close', () => r()));
    await assert.rejects(stock.deviceInfo(), { code: 'EIO' });
    await closed;
    stock.close();
    // Nothing of the three grants is left: no lease, the queue free, and a new client gets it.
    await until('no lease left', () => rig.broker.leases.all().length === 0, 10_000);
    restore();
    await using lease = await connect({ socket: rig.socket, timeoutMs: 10_000 });
    assert.equal(lease.info.queue, 0, 'the only queue is free again');
    const q = await Sa1Queue.create(lease, { entries: 8 });
    await q.nop();
    await q.close();
  } finally {
    await rig.close();
  }
});

test('setup and queue requests sent together all succeed and are answered in the order sent', async () => {
  const rig = await startRig();
  // The replies as they arrive on the wire (msg_id, error flag), read beside the client's own listener.
  const socket = connectVfioUser(rig.socket);
  const wire: { msgId: number; failed: boolean }[] = [];
  socket.on('message', (m) => {
    const r = decodeMessage(m.data);
    wire.push({ msgId: r.msgId, failed: r.errorNo !== 0 });
  });
  const client = await VfioUserClient.fromSocket(socket, {
    timeoutMs: 10_000,
    capabilities: { devlease: { request: {} } },
  });
  const vector = new EventFd();
  const err = new EventFd();
  const mem = MemFd.create('acquire-hops', { size: 8192 });
  try {
    const info = (client.serverCapabilities.raw['devlease'] as { info: { iovaWindow: { base: string } } })
      .info;
    const base = BigInt(info.iovaWindow.base);
    const answered: string[] = [];
    const call = (name: string, p: Promise<unknown>) => p.then(() => answered.push(name));
    wire.length = 0; // VERSION's reply
    const trigger = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    const map = (iova: bigint) => client.dmaMap({ fd: mem.fd, offset: 0n, iova, size: 4096n, flags: 3 });
    // All on the wire before any reply: the broker pipelines the device calls among them. The unmap of the
    // first map and the map again at the same IOVA must see the maps before them (they are not reordered).
    const all = [
      call(
        'region-info',
        client.regionInfo(2).then((r) => r.fd?.close()),
      ),
      call(
        'msix',
        client.setIrqs({
          flags: trigger,
          index: VFIO_PCI_MSIX_IRQ_INDEX,
          start: 0,
          count: 1,
          fds: [vector.fd],
        }),
      ),
      call(
        'err',
        client.setIrqs({ flags: trigger, index: VFIO_PCI_ERR_IRQ_INDEX, start: 0, count: 1, fds: [err.fd] }),
      ),
      call(
        'io-fds',
        client.regionIoFds(2).then((r) => {
          for (const f of r.fds) f.close();
        }),
      ),
      call('map-a', map(base)),
      call('map-b', map(base + 0x1000n)),
      call('unmap-a', client.dmaUnmap({ iova: base, size: 4096n })),
      call('map-a-again', map(base)),
      call('map-c', map(base + 0x2000n)),
      call('map-d', map(base + 0x3000n)),
      call('map-e', map(base + 0x4000n)),
    ];
    const settled = await Promise.allSettled(all);
    const failed = settled.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    assert.deepEqual(
      failed.map((f) => (f.reason as Error).message),
      [],
      'every request succeeds',
    );
    assert.equal(answered.length, all.length, 'every request answered');
    const ids = wire.map((w) => w.msgId);
    assert.equal(ids.length, all.length, 'one reply per request on the wire');
    assert.deepEqual(
      ids,
      [...ids].sort((a, b) => a - b),
      'replies arrive in the order the requests were sent',
    );
    assert.ok(
      wire.every((w) => !w.failed),
      'no error reply',
    );
    const [lease] = rig.broker.leases.all();
    assert.ok(lease, 'the lease is granted');
    assert.deepEqual(
      [...lease.mappings.keys()].sort((a, b) => (a < b ? -1 : 1)),
      [0n, 1n, 2n, 3n, 4n].map((i) => base + i * 0x1000n),
      'the broker holds exactly the maps left',
    );
  } finally {
    client.close();
    vector.close();
    err.close();
    mem.close();
    await until('the lease released', () => rig.broker.leases.all().length === 0, 10_000);
    await rig.close();
  }
});

test("a lease's setup and its queue's rings go to the device together: the rings' DMA_MAP does not wait for the MSI-X relay", async () => {
  const rig = await startRig();
  // The broker's device calls as issued and as answered (register accesses aside: the driver's heartbeat).
  const log: string[] = [];
  const dev = rig.broker.device as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
  const originals = new Map<string, (...a: unknown[]) => Promise<unknown>>();
  for (const name of ['setIrqs', 'dmaMap']) {
    const orig = dev[name]!;
    originals.set(name, orig);
    dev[name] = (...a: unknown[]) => {
      log.push(`issue ${name}`);
      return orig.apply(rig.broker.device, a).finally(() => log.push(`answer ${name}`));
    };
  }
  try {
    // The client library's own batch: the interrupts (MSI-X relayed to the device), the regions, then with
    // the queue its kick fd and its rings' DMA_MAP (relayed), all before any reply.
    const lease = await connect({ socket: rig.socket, timeoutMs: 10_000, deferSetup: true });
    try {
      const q = await Sa1Queue.create(lease, { entries: 8 });
      assert.equal((await q.nop()).status, 'OK');
      await q.close();
    } finally {
      lease.close();
    }
  } finally {
    for (const [name, orig] of originals) dev[name] = orig;
    await rig.close();
  }
  const mapIssued = log.indexOf('issue dmaMap');
  const msixAnswered = log.indexOf('answer setIrqs');
  assert.equal(log[0], 'issue setIrqs', `the MSI-X relay first: ${log.join(', ')}`);
  assert.ok(
    mapIssued >= 0 && mapIssued < msixAnswered,
    `the rings' DMA_MAP went to the device before the MSI-X relay's answer (a region request waiting for that answer would hold the map): ${log.join(', ')}`,
  );
});
