// The relay's own checks, piece by piece (src/broker/lease-dma-relay.ts), with a client that takes 4 KiB per
// command so one device access is several pieces — which SA-1's accesses (64 KiB at most, one piece) never
// are: the next piece is not sent once its mapping is unmapped or mapped anew at the same address, a second
// map at a taken address leaves the first one's relay alone, and one access's pieces share one deadline.
// The client here is a stand-in that records what it is asked (the whole path, with a real client and the
// simulator, is dma-relay.test.ts).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { AuditLog } from '../../src/broker/audit.js';
import type { Lease, LeaseMapping } from '../../src/broker/lease.js';
import {
  DmaRelay,
  RELAY_ACCESS_MS,
  RELAY_BACKOFF_MS,
  RELAY_MIN_PIECE_MS,
} from '../../src/broker/lease-dma-relay.js';
import { LeaseMappings } from '../../src/broker/lease-usage.js';
import type { Device } from '../../src/device/device.js';
import type { PeerDma } from '../../src/vfio/user/peer-dma.js';

const PIECE = 4096;

/** A client whose every read waits for answer(); `asked` lists [address, count, deadline ms] in order. */
function client(): PeerDma & { asked: [bigint, number, number][]; answer(): void; late: number } {
  const waiting: (() => void)[] = [];
  return {
    maxTransfer: PIECE,
    outstanding: 0,
    late: 0,
    get lateReplies() {
      return this.late;
    },
    asked: [],
    read(addr, count, ms) {
      this.asked.push([addr, count, ms]);
      return new Promise((r) =>
        waiting.push(() => r(new Uint8Array(count).fill(Number(addr >> 12n) & 0xff))),
      );
    },
    write(addr, data, ms) {
      this.asked.push([addr, data.byteLength, ms]);
      return new Promise((r) => waiting.push(() => r()));
    },
    answer() {
      waiting.shift()?.();
    },
  };
}

/** A live lease whose view address V is at device address 0x100000 + V (a translated view). */
function lease(peer: PeerDma | null): Lease {
  return {
    id: 'L1',
    live: true,
    state: 'active',
    ctx: { pid: 1 },
    peer,
    relayCounters: null,
    mappings: new LeaseMappings(),
  } as unknown as Lease;
}

function mapping(iova: bigint, size = 0x10000n): LeaseMapping {
  return { iova, deviceIova: 0x10_0000n + iova, size, read: true, write: true, relayed: true };
}

/** Lets the relay's awaits run (each answer resolves a promise the relay awaits). */
const turn = () => new Promise((r) => setImmediate(r));

function relay(): { relay: DmaRelay; audit: Record<string, unknown>[] } {
  const audit: Record<string, unknown>[] = [];
  const r = new DmaRelay(
    {} as Device,
    { write: (e: Record<string, unknown>) => audit.push(e) } as unknown as AuditLog,
    () => {},
  );
  return { relay: r, audit };
}

/** A relay with one lease (client `c`) whose mapping `m` at view address `iova` is relayed. */
function relayed(iova = 0n) {
  const { relay: r, audit } = relay();
  const c = client();
  const l = lease(c);
  const m = mapping(iova);
  r.add(l, m);
  l.mappings.set(m.iova, m);
  return { r, audit, c, l, m };
}

test('one access is several pieces, each at the client address of its offset', async () => {
  const { r, c, m } = relayed(0x2000n);
  const read = r.memoryAt(m.deviceIova).read(0x1000n, 3 * PIECE);
  for (let i = 0; i < 3; i++) {
    await turn();
    c.answer();
  }
  const bytes = (await read) as Uint8Array;
  assert.deepEqual(
    c.asked.map(([a, n]) => [a, n]),
    [
      [0x3000n, PIECE],
      [0x4000n, PIECE],
      [0x5000n, PIECE],
    ],
  );
  assert.deepEqual([bytes[0], bytes[PIECE], bytes[2 * PIECE]], [3, 4, 5], 'each piece in its place');
});

test('an unmap between pieces: the next piece is never sent, the access fails EFAULT', async () => {
  const { r, c, l, m } = relayed();
  const write = Promise.resolve(r.memoryAt(m.deviceIova).write(0n, new Uint8Array(2 * PIECE)));
  await turn();
  l.mappings.delete(m.iova); // the broker answered the client's DMA_UNMAP
  c.answer();
  await assert.rejects(
    write,
    (e: Error & { code?: string }) => e.code === 'EFAULT' && /unmapped during/.test(e.message),
  );
  assert.equal(c.asked.length, 1, 'only the piece sent before the unmap');
  assert.equal(r.size, 0);
});

test('a new map at the same address between pieces: the old access does not go on into it', async () => {
  const { relay: r } = relay();
  const c = client();
  const l = lease(c);
  const old = mapping(0n);
  r.add(l, old);
  l.mappings.set(old.iova, old);
  const read = Promise.resolve(r.memoryAt(old.deviceIova).read(0n, 2 * PIECE));
  await turn();
  l.mappings.delete(old.iova);
  const now = mapping(0n);
  r.add(l, now);
  l.mappings.set(now.iova, now);
  c.answer();
  await assert.rejects(read, /unmapped during the device's access/);
  assert.equal(c.asked.length, 1);
  // An access that arrived before the new map was made (queued in the broker) was meant for the old one.
  await assert.rejects(
    Promise.resolve(r.memoryAt(now.deviceIova).read(0n, 16, performance.now() - 1000)),
    /no lease memory is mapped/,
  );
  assert.equal(c.asked.length, 1);
  // The new map is served.
  const next = r.memoryAt(now.deviceIova).read(0n, 16);
  await turn();
  c.answer();
  assert.equal(((await next) as Uint8Array).byteLength, 16);
});

test('a second map at an address already relayed is refused EEXIST and leaves the first one served', async () => {
  const { relay: r } = relay();
  const c = client();
  const l = lease(c);
  const first = mapping(0n);
  r.add(l, first);
  l.mappings.set(first.iova, first);
  assert.throws(
    () => r.add(l, mapping(0n)),
    (e: Error & { code?: string }) => e.code === 'EEXIST',
  );
  r.remove(mapping(0n)); // what a failed map undoes: not the first one's entry
  assert.equal(r.size, 1);
  const read = r.memoryAt(first.deviceIova).read(0n, 8);
  await turn();
  c.answer();
  assert.equal(((await read) as Uint8Array).byteLength, 8);
});

test("one access's pieces share its deadline from its arrival; time spent before the client was asked is no client's fault", async () => {
  const { r, audit, c, l, m } = relayed();
  await new Promise((res) => setTimeout(res, RELAY_ACCESS_MS)); // mapped before the access arrived
  // Arrived RELAY_ACCESS_MS - 400 ms ago (it waited in the broker's queue): 400 ms left for all its pieces.
  const read = Promise.resolve(
    r.memoryAt(m.deviceIova).read(0n, 2 * PIECE, performance.now() - RELAY_ACCESS_MS + 400),
  );
  await turn();
  assert.equal(c.asked.length, 1);
  assert.ok(c.asked[0]![2] <= 400, `the first piece gets what is left (${c.asked[0]![2]} ms)`);
  await new Promise((res) => setTimeout(res, 100)); // the client answers, with under 375 ms left
  c.answer();
  await assert.rejects(
    read,
    (e: Error & { code?: string }) => e.code === 'ETIMEDOUT' && /too late/.test(e.message),
  );
  assert.equal(c.asked.length, 1, 'no piece sent with too little time left');
  // The client answered what it was asked: a failure, but no timeout of its own and no backoff.
  assert.deepEqual(
    { timeouts: l.relayCounters!.timeouts, failures: l.relayCounters!.failures },
    { timeouts: 0, failures: 1 },
  );
  assert.equal(audit.length, 0);
  // An access that waited longer than RELAY_ACCESS_MS - RELAY_MIN_PIECE_MS is not sent at all.
  const stale = Promise.resolve(
    r.memoryAt(m.deviceIova).read(0n, 8, performance.now() - RELAY_ACCESS_MS + RELAY_MIN_PIECE_MS - 1),
  );
  await assert.rejects(stale, /too late/);
  assert.equal(c.asked.length, 1);
  assert.equal(l.relayCounters!.timeouts, 0);
});

test("the client's own timeout starts its backoff, reported once; it is not asked again while a reply is late", async () => {
  const { r, audit, c, l, m } = relayed();
  // The client leaves it unanswered: its PeerDma times the piece out (ETIMEDOUT) and owes a late reply.
  const answering = c.read;
  c.read = (addr, n, ms) => {
    c.asked.push([addr, n, ms]);
    c.late = 1;
    return Promise.reject(
      Object.assign(new Error('the client did not answer in time'), { code: 'ETIMEDOUT' }),
    );
  };
  await assert.rejects(Promise.resolve(r.memoryAt(m.deviceIova).read(0n, 8)), /did not answer/);
  assert.deepEqual(
    { timeouts: l.relayCounters!.timeouts, failures: l.relayCounters!.failures },
    { timeouts: 1, failures: 1 },
  );
  assert.equal(audit.length, 1);
  assert.equal(audit[0]!.event, 'relay-timeout');
  const backoff = l.relayCounters!.backoffUntil - performance.now();
  assert.ok(backoff > RELAY_BACKOFF_MS - 1000 && backoff <= RELAY_BACKOFF_MS, `${backoff} ms of backoff`);
  // Still late, and in the backoff: failed at once, nothing asked, no second report.
  await assert.rejects(Promise.resolve(r.memoryAt(m.deviceIova).read(0n, 8)), /not asked again yet/);
  assert.equal(c.asked.length, 1);
  // The late reply came but the backoff runs: still failed at once.
  c.late = 0;
  await assert.rejects(Promise.resolve(r.memoryAt(m.deviceIova).read(0n, 8)), /not asked again yet/);
  // Past the backoff (moved back here rather than waited for): asked again.
  l.relayCounters!.backoffUntil = performance.now() - 1;
  c.read = answering;
  const again = Promise.resolve(r.memoryAt(m.deviceIova).read(0n, 8));
  await turn();
  c.answer();
  assert.equal(((await again) as Uint8Array).byteLength, 8);
  assert.equal(audit.length, 1, 'reported once');
});

test('while an upgrade holds the relay, accesses fail EAGAIN at once, charged to no one', async () => {
  const { r, c, l, m } = relayed();
  r.hold();
  await assert.rejects(
    Promise.resolve(r.memoryAt(m.deviceIova).read(0n, 8)),
    (e: Error & { code?: string }) => e.code === 'EAGAIN',
  );
  assert.equal(c.asked.length, 0);
  assert.equal(r.inFlight, 0);
  r.unhold();
  const read = Promise.resolve(r.memoryAt(m.deviceIova).read(0n, 8));
  assert.equal(r.inFlight, 1);
  await turn();
  c.answer();
  await read;
  assert.equal(r.inFlight, 0);
  assert.equal(l.relayCounters!.timeouts, 0);
});
