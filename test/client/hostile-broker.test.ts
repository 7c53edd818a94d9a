// The lease client against a broker that sends what no broker should (test/helpers/fake-lease-broker.ts): each
// case is refused with an error naming the problem (EPROTO), before the client acts on it, and every fd the
// connection brought is closed.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { connect } from '../../src/client/lease.js';
import { Sa1Queue } from '../../src/client/sa1-queue.js';
import { Fd, MemFd, native } from '../../src/sys/index.js';
import * as P from '../../src/vfio/user/protocol.js';
import { type FakeBroker, type FakeBrokerOptions, fakeLeaseBroker } from '../helpers/fake-lease-broker.js';
import { assertNoFdLeak, trackFdLeaks } from '../helpers/fds.js';
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

/** A blocking eventfd whose counter stands one below its limit: a write of 1 to it never returns. */
function saturatedBlockingEventfd(): Fd {
  const fd = new Fd(native.eventfd(0, 0));
  native.eventfdWrite(fd.fd, 0xffff_ffff_ffff_fffen);
  return fd;
}

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
          message: new RegExp(`region 2 io fd at offset 0xc refused: ${why.source}`),
        });
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
