// The lease client against a broker that sends what no broker should (test/helpers/fake-lease-broker.ts): each
// case is refused with an error naming the problem (EPROTO), before the client acts on it, and every fd the
// connection brought is closed.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { connect } from '../../src/client/lease.js';
import { Sa1Queue } from '../../src/client/sa1-queue.js';
import { Fd, MemFd, native } from '../../src/sys/index.js';
import * as P from '../../src/vfio/user/protocol.js';
import {
  type FakeBroker,
  type FakeBrokerOptions,
  fakeLeaseBroker,
  LEASE_INFO,
} from '../helpers/fake-lease-broker.js';
import { assertNoFdLeak, memfdFdCount, saturatedBlockingEventfd, trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

/** Lease.connect to a fake broker; the broker is closed after, and the fds are checked around both. */
async function leaseFrom<T>(opts: FakeBrokerOptions, use: (broker: FakeBroker) => Promise<T>): Promise<T> {
  return assertNoFdLeak(async () => {
    const broker = fakeLeaseBroker(opts);
    try {
      return await use(broker);
    } finally {
      broker.close();
    }
  });
}

test('the fake broker itself is well-formed: a lease connects, with the info in VERSION or in its region', async () => {
  for (const infoInVersion of [true, false]) {
    await leaseFrom({ infoInVersion }, async (broker) => {
      const lease = await within(connect({ socket: broker.socket, timeoutMs: 2000 }), 'connect');
      assert.equal(lease.info.lease, 'queue-9');
      assert.equal(lease.region(2).length, 4096);
      lease.close();
    });
  }
});

test('an info region larger than 1 MiB is refused (EPROTO) before any of it is read', async () => {
  // 2 MiB here (2^36 did the same: the whole size was read at once, the event loop stuck building the reads).
  await leaseFrom({ infoInVersion: false, infoSize: 2n << 20n }, async (broker) => {
    await assert.rejects(
      within(connect({ socket: broker.socket, timeoutMs: 2000 }), 'connect refusing the info'),
      {
        code: 'EPROTO',
        message: /info region 9: size 2097152 is not an info region's/,
      },
    );
    assert.ok(!broker.commands.includes(P.VFIO_USER_REGION_READ), 'nothing of it was read');
  });
});

test('a doorbell kick fd that would block the submit (a blocking eventfd, or no eventfd) is refused: EPROTO', async () => {
  const kinds: [string, () => Fd, RegExp][] = [
    ['a saturated blocking eventfd', saturatedBlockingEventfd, /it is a blocking eventfd \(no O_NONBLOCK\)/],
    ['a memfd', () => MemFd.create('not-a-kick', { size: 4096 }).fd, /it is not an eventfd/],
  ];
  for (const [what, kickFd, why] of kinds) {
    await leaseFrom({ kickFd }, async (broker) => {
      const lease = await within(connect({ socket: broker.socket, timeoutMs: 2000 }), 'connect');
      try {
        // Before the fix the queue was made with it, and its first kicked submit blocked in write(2) for good.
        await assert.rejects(within(Sa1Queue.create(lease), `${what}: the queue refused`), {
          code: 'EPROTO',
          message: new RegExp(`doorbell kick fd \\(region 2 io fd at 0xc\\) is refused: ${why.source}`),
        });
        // Lease.ioEventFd itself hands any io fd over (libvfio-user's servers register blocking eventfds): a
        // caller that kicks one itself decides.
        assert.ok(await lease.ioEventFd(2, 0x0c), "the io fd is the lease caller's to judge");
      } finally {
        lease.close();
      }
    });
  }
});

test('a non-blocking eventfd is taken as the kick', async () => {
  const { EFD_NONBLOCK } = native.constants as Record<string, number>;
  await leaseFrom({ kickFd: () => new Fd(native.eventfd(0, EFD_NONBLOCK!)) }, async (broker) => {
    const lease = await within(connect({ socket: broker.socket, timeoutMs: 2000 }), 'connect');
    try {
      const kick = await lease.ioEventFd(2, 0x0c);
      assert.ok(kick && !kick.closed, 'the kick fd is kept');
      const q = await within(Sa1Queue.create(lease), 'the queue');
      await q.close();
    } finally {
      lease.close();
    }
  });
});

/** Mappings of the fake broker's slice memfds in this process (a mapping holds no fd: fd counts miss it). */
const sliceMappings = () =>
  readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes('/memfd:fake-slice')).length;

test('lease info the client would act on wrongly is refused (EPROTO naming the field); nothing stays mapped', async () => {
  const cases: [string, FakeBrokerOptions, RegExp][] = [
    [
      // Before the fix the second mapping replaced the first, which then outlived close().
      'region 2 listed twice',
      { info: { ...LEASE_INFO, regions: [LEASE_INFO.regions[0], LEASE_INFO.regions[0]] } },
      /info region: region 2 is listed twice \(regions\[1\]\)/,
    ],
    [
      '4096 vectors',
      { info: { ...LEASE_INFO, vectors: 4096 } },
      /info region: vectors 4096 is not a vector count/,
    ],
    ['vectors -1', { info: { ...LEASE_INFO, vectors: -1 } }, /info region: vectors -1 is not a vector count/],
    [
      'a region index that is no index',
      { info: { ...LEASE_INFO, regions: [{ index: 2.5, size: '0x1000', unit: '0x1000' }] } },
      /info region: regions\[0\]\.index is not a region index/,
    ],
    [
      'faultsTotal below the faults listed',
      {
        info: {
          ...LEASE_INFO,
          faults: [{ queue: 0, code: 3, name: 'WINDOW_VIOLATION', address: '0x0' }],
          faultsTotal: 0,
        },
      },
      /info region: faultsTotal 0 is not a count of at least the 1 faults listed/,
    ],
    [
      'faultsTotal -1',
      { info: { ...LEASE_INFO, faultsTotal: -1 } },
      /info region: faultsTotal -1 is not a count/,
    ],
    [
      // Index 3 is ERR: the notice eventfd replaced the ERR one.
      'noticeIrq 3',
      { devlease: { noticeIrq: 3 } },
      /VERSION reply: devlease\.noticeIrq 3 is not an irq index above the standard five/,
    ],
  ];
  const mapped = sliceMappings();
  for (const [what, opts, why] of cases) {
    await leaseFrom(opts, async (broker) => {
      await assert.rejects(within(connect({ socket: broker.socket, timeoutMs: 2000 }), what), {
        code: 'EPROTO',
        message: why,
      });
    });
    assert.equal(sliceMappings(), mapped, `${what}: no slice left mapped`);
  }
});

test('a queue page shorter than the SA-1 queue registers: the queue is refused (EPROTO), its rings freed', async () => {
  await leaseFrom(
    { sliceSize: 16, info: { ...LEASE_INFO, regions: [{ index: 2, size: '0x10', unit: '0x10' }] } },
    async (broker) => {
      const lease = await within(connect({ socket: broker.socket, timeoutMs: 2000 }), 'connect');
      try {
        // Before the fix: a RangeError at the first register access, the rings left allocated.
        await assert.rejects(within(Sa1Queue.create(lease), 'the queue refused'), {
          code: 'EPROTO',
          message: /the queue page \(region 2\) is 16 bytes, smaller than the SA-1 queue registers \(56\)/,
        });
        assert.equal(memfdFdCount('devlease-dma'), 0, 'the rings were freed (their memfd closed)');
        assert.ok(broker.commands.includes(P.VFIO_USER_DMA_UNMAP), 'and unmapped');
      } finally {
        lease.close();
      }
    },
  );
});
