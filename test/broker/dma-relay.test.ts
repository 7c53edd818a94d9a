// A lease's memory without an fd (QEMU's guest RAM when it is not shared, policy.dma_without_fd = "relay"):
// the broker maps it on the device without an fd and relays each of the device's DMA_READ/DMA_WRITE to the
// lease's client, at the client's own address. Refused by default, naming the setting; once the client
// unmaps, or its lease ends, nothing more reaches its memory; a client that does not answer costs the device
// one bounded wait, and the device goes on serving everyone.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { configFromObject } from '../../src/broker/config.js';
import { RELAY_ACCESS_MS, RELAY_BACKOFF_MS } from '../../src/broker/lease-dma-relay.js';
import { encodeDescriptor } from '../../src/sim/model/descriptor.js';
import { EventFd, type Mapping, MemFd } from '../../src/sys/index.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import type { DmaMemory } from '../../src/vfio/user/dma-maps.js';
import { type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { cqeAt, programRings, ringNop, wireGuestQueue } from '../helpers/guest-queue.js';
import { OP, ST } from '../sim/conformance/sa1-spec.js';

after(trackFdLeaks());

const RELAY = { policy: { dma_without_fd: 'relay' } };
/** Where the tests put a second map (after the 64 KiB of rings at view address 0). */
const DATA = 0x10000n;

/** The completion in CQ slot `slot`: its tag and status (phase bit off), once the phase bit says it is there. */
function completion(ram: Uint8Array, slot: number): { tag: bigint; status: number } | null {
  const cqe = cqeAt(ram, slot);
  const word = cqe.getUint32(12, true);
  return word >>> 16 === 1 ? { tag: cqe.getBigUint64(0, true), status: word & 0xffff } : null;
}

/** A stock client's lease (no devlease negotiation: QEMU's way), its rings in a buffer mapped without an fd. */
async function stockLease(rig: Rig): Promise<{
  client: VfioUserClient;
  ram: Uint8Array;
  page: Mapping;
  efd: EventFd;
  close(): Promise<void>;
}> {
  const client = await VfioUserClient.connect(rig.socket);
  const efd = new EventFd();
  const ram = new Uint8Array(65536);
  const page = await wireGuestQueue(client, efd, ram).catch(async (err) => {
    await client.close();
    efd.close();
    throw err;
  });
  return {
    client,
    ram,
    page,
    efd,
    async close() {
      page.unmap();
      await client.close();
      efd.close();
    },
  };
}

/** Memory whose every access waits for release(); `touched` counts the accesses that reached it. */
function heldMemory(): { memory: DmaMemory; release: () => void; touched: () => number } {
  let touched = 0;
  let release = (): void => {};
  const held = new Promise<void>((r) => {
    release = r;
  });
  return {
    memory: {
      read: async (_offset, count) => {
        touched++;
        await held;
        return new Uint8Array(count);
      },
      write: async () => {
        touched++;
        await held;
      },
    },
    release,
    touched: () => touched,
  };
}

/** A second lease with its RAM in a memfd: what the device serves while another client keeps it waiting. */
async function fdLeaseNop(rig: Rig, tag: bigint): Promise<void> {
  const client = await VfioUserClient.connect(rig.socket);
  const efd = new EventFd();
  using ram = MemFd.create('ram', { size: 65536 });
  const map = ram.map();
  try {
    const page = await wireGuestQueue(client, efd, ram);
    try {
      ringNop(page, map, 0, tag);
      await until('the fd lease completion', () => completion(map.u8, 0) !== null);
      assert.deepEqual(completion(map.u8, 0), { tag, status: ST.OK });
    } finally {
      page.unmap();
    }
  } finally {
    map.unmap();
    await client.close();
    efd.close();
  }
}

test('by default a DMA_MAP without an fd is refused, naming policy.dma_without_fd; the device is never asked', async () => {
  assert.throws(
    () => configFromObject({ policy: { dma_without_fd: 'yes' } }),
    /policy\.dma_without_fd.*must be "refuse" or "relay" \(got "yes"\)/,
  );
  const rig = await startRig();
  const client = await VfioUserClient.connect(rig.socket);
  try {
    const err = await client
      .dmaMap({ iova: 0n, size: 65536n, flags: 3, memory: new Uint8Array(65536) })
      .then(() => assert.fail('mapped'))
      .catch((e) => e);
    assert.equal(err.code, 'EINVAL', err.message);
    assert.match(err.message, /DMA_MAP without an fd.*policy\.dma_without_fd = "refuse"/);
    assert.equal((await rig.sim.stats()).dmaMaps, 0, 'the device was never asked');
    assert.equal(rig.broker.leases.relay.size, 0);
  } finally {
    await client.close();
    await rig.close();
  }
});

test('relayed: a queue whose rings and data live in client memory without an fd runs, every access by message', async () => {
  const rig = await startRig({ config: RELAY });
  const lease = await stockLease(rig);
  try {
    const data = new Uint8Array(65536);
    for (let i = 0; i < 20480; i++) data[i] = (i * 13 + 1) & 0xff;
    await lease.client.dmaMap({ iova: DATA, size: 65536n, flags: 3, memory: data });
    assert.equal(rig.broker.leases.relay.size, 2, 'both maps relayed');
    ringNop(lease.page, lease.ram, 0, 0x51n);
    await until('the interrupt', () => lease.efd.read() !== null);
    assert.deepEqual(completion(lease.ram, 0), { tag: 0x51n, status: ST.OK }, 'the CQE written by relay');
    // A COPY inside the client's data map, 20 KiB: read from and written to it by message.
    encodeDescriptor(
      { opcode: OP.COPY, flags: 1, tag: 0x52n, length: 20480, src: DATA, dst: DATA + 0x8000n },
      lease.ram,
      64,
    );
    new DataView(lease.page.u8.buffer, lease.page.u8.byteOffset).setUint32(0x0c, 2, true);
    await until('the COPY', () => completion(lease.ram, 1) !== null);
    assert.deepEqual(completion(lease.ram, 1), { tag: 0x52n, status: ST.OK });
    assert.deepEqual(data.subarray(0x8000, 0x8000 + 20480), data.subarray(0, 20480), 'the bytes moved');
    const stats = await rig.sim.stats();
    assert.ok(stats.remoteAccesses >= 4 && stats.remoteFailures === 0, JSON.stringify(stats));
    // What `devlease leases --json` shows of it.
    const row = rig.broker.leases.all()[0]!.summary();
    assert.equal(row.relayedMappings, 2);
    const relayStats = row.relayStats as { accesses: number; failures: number; timeouts: number };
    assert.ok(relayStats.accesses >= 4 && relayStats.failures === 0 && relayStats.timeouts === 0);
    await lease.client.dmaUnmap({ iova: DATA, size: 65536n });
    assert.equal(rig.broker.leases.relay.size, 1, 'the unmapped one is no longer relayed');
  } finally {
    await lease.close();
    await until('the lease reclaimed', () => rig.broker.leases.all().length === 0);
    assert.equal(rig.broker.leases.relay.size, 0, 'nothing relayed once the lease ended');
    await rig.close();
  }
});

/**
 * A relaying broker, a stock lease, and a COPY (tag `tag`) from a second map of memory that holds every
 * access until released: `body` runs once the device is waiting on the client for it.
 */
async function withHeldCopy(
  tag: bigint,
  body: (
    rig: Rig,
    lease: Awaited<ReturnType<typeof stockLease>>,
    held: ReturnType<typeof heldMemory>,
  ) => Promise<void>,
): Promise<void> {
  const rig = await startRig({ config: RELAY });
  const lease = await stockLease(rig);
  const held = heldMemory();
  try {
    await lease.client.dmaMap({ iova: DATA, size: 65536n, flags: 3, memory: held.memory });
    encodeDescriptor({ opcode: OP.COPY, flags: 1, tag, length: 4096, src: DATA, dst: 0x4000n }, lease.ram, 0);
    new DataView(lease.page.u8.buffer, lease.page.u8.byteOffset).setUint32(0x0c, 1, true); // SQ_TAIL
    await until('the device to read the held memory', () => held.touched() === 1);
    await body(rig, lease, held);
  } finally {
    held.release();
    await lease.close().catch(() => {});
    await rig.close();
  }
}

test('an unmap while the device waits on the client is answered at once; nothing reaches the client after it', async () => {
  await withHeldCopy(0x61n, async (rig, lease, held) => {
    const t0 = Date.now();
    await lease.client.dmaUnmap({ iova: DATA, size: 65536n });
    const unmapMs = Date.now() - t0;
    assert.ok(unmapMs < RELAY_ACCESS_MS, `the unmap waited ${unmapMs} ms for the access`);
    assert.equal(rig.broker.leases.relay.size, 1, 'only the rings are relayed now');
    // The held read answers now, after the unmap: too late, the device faults the COPY (its completion
    // reaches the rings once this client serves commands again: it serves them in order, as QEMU does).
    held.release();
    await until('the COPY to fault', () => completion(lease.ram, 0) !== null);
    assert.deepEqual(completion(lease.ram, 0), { tag: 0x61n, status: ST.IOMMU_FAULT });
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(held.touched(), 1, 'no access after the unmap was answered');
    assert.equal(
      lease.ram.subarray(0x4000, 0x5000).some((b) => b !== 0),
      false,
      'no data copied',
    );
    await fdLeaseNop(rig, 0x62n);
  });
});

test('a client that never answers costs the device one bounded wait: the access fails, others are served meanwhile', async () => {
  await withHeldCopy(0x71n, async (rig, lease, held) => {
    // One wait: the read timed out, and the COPY's completion (a write to the same silent client) failed at
    // once, as every access does until the client answers the one that timed out (one wait more without).
    const t0 = Date.now();
    await until(
      'the read and the completion to fail',
      async () => (await rig.sim.stats()).remoteFailures >= 2,
      RELAY_ACCESS_MS * 3,
    );
    const failedMs = Date.now() - t0;
    assert.ok(failedMs < RELAY_ACCESS_MS + 1000, `the device waited ${failedMs} ms for two accesses`);
    const lease0 = rig.broker.leases.all()[0]!;
    assert.deepEqual(
      { timeouts: lease0.relayCounters!.timeouts, failures: lease0.relayCounters!.failures },
      { timeouts: 1, failures: 2 },
    );
    assert.ok(rig.audit.some((e) => e.event === 'relay-timeout' && e.lease === lease0.id));
    // The client still holds its read: the device serves another lease all the same.
    await fdLeaseNop(rig, 0x73n);
    assert.equal(held.touched(), 1);
    await until(
      'the other lease reclaimed, the slow client keeping its own',
      () => rig.broker.leases.all().length === 1,
    );
    // Once it has answered (late) and the backoff has passed, its memory is reached again: after a reset of
    // its queue (the failed completion stopped it), a NOP completes.
    held.release();
    await until('the late answer to be read', () => lease0.peer!.lateReplies === 0);
    const left = lease0.relayCounters!.backoffUntil - performance.now();
    assert.ok(left > 0 && left <= RELAY_BACKOFF_MS, `the backoff runs (${left} ms left)`);
    await new Promise((r) => setTimeout(r, left + 50));
    await lease.client.reset();
    lease.ram.fill(0);
    programRings(lease.page);
    ringNop(lease.page, lease.ram, 0, 0x74n);
    await until('the NOP after the late answer', () => completion(lease.ram, 0) !== null);
    assert.deepEqual(completion(lease.ram, 0), { tag: 0x74n, status: ST.OK });
  });
});

test('a client that leaves while the device waits on it: its lease is reclaimed, the device serves the next', async () => {
  await withHeldCopy(0x81n, async (rig, lease) => {
    await lease.close();
    await until('the lease reclaimed', () => rig.broker.leases.all().length === 0);
    assert.equal(rig.broker.leases.relay.size, 0);
    await fdLeaseNop(rig, 0x82n);
  });
});

test('relayed maps count in the limits; a read-only one takes no device write', async () => {
  const rig = await startRig({
    config: { policy: { dma_without_fd: 'relay', rule: [{ any: true, max_mappings: 2 }] } },
  });
  const lease = await stockLease(rig); // its rings: one relayed map
  try {
    const ro = new Uint8Array(65536).fill(0x5a);
    await lease.client.dmaMap({ iova: DATA, size: 65536n, flags: 1, memory: ro }); // read-only
    const err = await lease.client
      .dmaMap({ iova: DATA * 2n, size: 65536n, flags: 3, memory: new Uint8Array(65536) })
      .then(() => assert.fail('a third map passed max_mappings = 2'))
      .catch((e) => e);
    assert.equal(err.code, 'EACCES', err.message);
    assert.equal(rig.broker.leases.relay.size, 2, 'the refused map is not relayed');
    encodeDescriptor(
      { opcode: OP.FILL, flags: 1, tag: 0x92n, length: 4096, dst: DATA, imm: 0x1111_1111_1111_1111n },
      lease.ram,
      0,
    );
    new DataView(lease.page.u8.buffer, lease.page.u8.byteOffset).setUint32(0x0c, 1, true);
    await until('the FILL into read-only memory to fault', () => completion(lease.ram, 0) !== null);
    assert.deepEqual(completion(lease.ram, 0), { tag: 0x92n, status: ST.IOMMU_FAULT });
    assert.ok(
      ro.every((b) => b === 0x5a),
      'the read-only memory is unchanged',
    );
  } finally {
    await lease.close();
    await rig.close();
  }
});
