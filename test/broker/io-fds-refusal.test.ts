// A device's region io fds are asked once per device connection, not once per lease, whatever the answer:
// - an SA-1 with over 253 queues (more kick fds than one message carries) shares them among its queues, and
//   every lease's queue still gets its kick fd from the broker's one request;
// - a refusal that is the device's answer for the connection's lifetime (ENOSPC, from a device that cannot
//   share; ENOTSUP) is kept too: each refusal cost the simulator a pass over all its queues' eventfds, and with
//   1,024 queues ~10 ms per lease. Here the refusal comes from devlease's own vfio-user server, which answers
//   ENOSPC for a model offering more fds than the client takes (request-replies.ts), over a real socket pair.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { IoFdCache } from '../../src/device/io-fd-cache.js';
import { Fd, native } from '../../src/sys/index.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { type RegionIoFds, VFIO_USER_IO_FD_TYPE_IOEVENTFD } from '../../src/vfio/user/region-io-fds.js';
import { VfioUserServer } from '../../src/vfio/user/server.js';
import { vfioUserPair } from '../../src/vfio/user/transport.js';
import { MemoryDevice } from '../fixtures/vfio-user/memory-device.js';
import { ClientProc, startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test("a 300-queue device's kick fds are asked of it once, shared 253 ways; every lease's queue gets one", async () => {
  const rig = await startRig({ sim: { numQueues: 300 } });
  const clients: ClientProc[] = [];
  // Count the broker's requests to the device (the real call runs).
  const client = rig.device.client;
  const ask = client.regionIoFds.bind(client);
  const answers: number[] = [];
  client.regionIoFds = async (...args) => {
    const r = await ask(...args);
    answers.push(r.fds.length);
    return r;
  };
  try {
    const armed0 = (await rig.sim.stats()).armedSleeps;
    for (let i = 0; i < 3; i++) {
      const c = await ClientProc.spawn();
      clients.push(c);
      await c.call('connect', { socket: rig.socket });
      await c.call('queue');
      assert.equal((await c.call('submit', { desc: { opcode: 'NOP' } })).status, 'OK', `lease ${i}'s NOP`);
    }
    assert.deepEqual(
      answers,
      [253],
      'the device was asked once, and sent as many fds as one message carries',
    );
    // What a lease on queue 260 would get (session.ts asks the device's cache for its page alone): one fd, the
    // same open file as queue 7's (260 mod 253).
    const all = await rig.device.regionIoFds(2);
    const pageOf = (q: number) => {
      const s = all.subRegions[q]!;
      return { offset: s.offset - 0x0cn, size: all.subRegions[1]!.offset - all.subRegions[0]!.offset };
    };
    const q7 = await rig.device.regionIoFds(2, pageOf(7));
    const q260 = await rig.device.regionIoFds(2, pageOf(260));
    try {
      assert.equal(all.fds.length, 253);
      assert.deepEqual([q260.subRegions.length, q260.fds.length, q260.subRegions[0]!.fdIndex], [1, 1, 0]);
      assert.equal(eventfdId(q260.fds[0]!), eventfdId(q7.fds[0]!), "queue 260 shares queue 7's eventfd");
      assert.notEqual(eventfdId(q7.fds[0]!), eventfdId(all.fds[8]!), 'queue 8 does not');
    } finally {
      for (const fd of [...all.fds, ...q7.fds, ...q260.fds]) fd.close();
    }
    const held = rig.broker.leases.all().filter((l) => l.live).length;
    assert.equal(held, 3);
    assert.ok((await rig.sim.stats()).armedSleeps > armed0, 'the device sleeps until kicked');
  } finally {
    client.regionIoFds = ask;
    await Promise.all(clients.map((c) => c.kill()));
    await rig.close();
  }
});

/**
 * Which eventfd an fd is (every eventfd has the same anonymous inode, so fstat cannot tell two apart): the
 * kernel's eventfd-id in /proc/self/fdinfo.
 */
function eventfdId(fd: Fd): string {
  const id = /^eventfd-id:\s*(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd.fd}`, 'utf8'))?.[1];
  if (id === undefined)
    throw new Error(
      `fd ${fd.fd}: no eventfd-id in /proc/self/fdinfo (not an eventfd, or a kernel whose fdinfo shows no eventfd ids)`,
    );
  return id;
}

/** A device model offering `count` ioeventfds on region 2, one per 4-byte sub-region, none shared. */
class ManyIoFdsDevice extends MemoryDevice {
  asked = 0;
  constructor(readonly count: number) {
    super();
  }
  regionIoFds(): RegionIoFds {
    this.asked++;
    const fds = Array.from({ length: this.count }, () => new Fd(native.eventfd(0, 0)));
    return {
      subRegions: fds.map((_, i) => ({
        offset: BigInt(i * 4),
        size: 4n,
        fdIndex: i,
        type: VFIO_USER_IO_FD_TYPE_IOEVENTFD,
        flags: 0,
        datamatch: 0n,
      })),
      fds,
    };
  }
}

test('an ENOSPC refusal of GET_REGION_IO_FDS is kept: asked of the device once, every later ask refused alike', async () => {
  const device = new ManyIoFdsDevice(300);
  const server = new VfioUserServer({ createDevice: () => device, log: () => {} });
  const [a, b] = vfioUserPair();
  server.serveSocket(b);
  let client: VfioUserClient | null = null;
  let asked = 0;
  const cache = new IoFdCache((index) => {
    asked++;
    return client!.regionIoFds(index);
  });
  try {
    client = await VfioUserClient.fromSocket(a); // takes MAX_FDS (253) fds per message
    for (let i = 0; i < 3; i++) await assert.rejects(cache.get(2), { code: 'ENOSPC' }, `ask ${i}`);
    assert.equal(asked, 1, 'the device was asked once');
    // Two messages, one request: the first reply, head-only, said how large a whole one is (argsz).
    assert.equal(device.asked, 2);
  } finally {
    cache.drop();
    client?.close(); // a failed VERSION closed the socket itself (fromSocket)
    await server.close();
    device.mem.close();
  }
});
