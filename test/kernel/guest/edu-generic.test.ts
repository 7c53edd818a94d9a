// Runs INSIDE a kernel-rig guest (npm run test:kernel), never on the host.
// QEMU's edu bound to vfio-pci, leased by the generic driver (loaded as a driver module: the built-in edu
// driver would take edu): a device with no reset method, and one whose lease vector is its INTx line, relayed
// by the broker (lease-intx.ts). edu.test.ts drives edu with its own driver.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { Broker } from '../../../src/broker/broker.js';
import { connect } from '../../../src/client/index.js';
import { EDU } from '../../../src/drivers/edu.js';
import { trackFdLeaks } from '../../helpers/fds.js';
import { withGenericKernelBroker } from './fixtures/generic-broker.js';
import { bdf, inEduGuest } from './fixtures/guest.js';

const BAR0 = 0;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

after(trackFdLeaks());

inEduGuest();

/** Waits for `cond` (bounded, so a stuck device fails the test with `what` instead of hanging it). */
async function until(what: string, cond: () => Promise<boolean> | boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** The generic driver (loaded as a driver module: the edu driver would take edu) over edu, for `fn`. */
async function withGenericEdu(
  reuseWithoutReset: boolean,
  fn: (broker: Broker, socket: string) => Promise<void>,
) {
  await withGenericKernelBroker(
    { bdf, config: { generic: { reuse_without_reset: reuseWithoutReset } } },
    async (broker, socket) => {
      assert.equal(broker.driver.name, 'generic');
      await fn(broker, socket);
      await until('every lease to end', () => broker.leases.all().length === 0);
    },
  );
}

const u32 = (v: number) => new Uint8Array(new Uint32Array([v]).buffer);

// The generic driver over edu, which has no reset method under vfio-pci (no FLR or PM capability, and on the
// root bus no bus reset): what a lease leaves (here the liveness register) cannot be cleared. The device is
// leased no more after its first lease, the next client told why; with [generic] reuse_without_reset it is
// leased again as the last lease left it.
test('broker: the generic driver over edu (no reset method): leased no more after a lease, or again with reuse_without_reset', async () => {
  for (const reuse of [false, true]) {
    await withGenericEdu(reuse, async (broker, socket) => {
      assert.equal(
        broker.device.resettable,
        false,
        'edu reports no reset method (VFIO_DEVICE_FLAGS_RESET clear)',
      );
      const first = await connect({ socket });
      await first.client.regionWrite(BAR0, EDU.LIVENESS, u32(0x12345678));
      first.close();
      await until('the first lease to end', () => broker.leases.all().length === 0);
      if (!reuse) {
        await assert.rejects(
          connect({ socket }),
          /quarantined: the device reports no reset method .*reuse_without_reset = true/,
        );
        return;
      }
      const next = await connect({ socket });
      try {
        const live = await next.client.regionRead(BAR0, EDU.LIVENESS, 4);
        assert.equal(
          new DataView(live.buffer, live.byteOffset).getUint32(0, true),
          ~0x12345678 >>> 0,
          'the liveness register as the last lease left it',
        );
      } finally {
        next.close();
      }
    });
  }
});

// edu under the generic driver has no MSI-X: its INTx line is the lease's vector 0. vfio-pci masks the line at
// each interrupt until told to unmask it, which a lease client (shown an MSI-X vector) never does: wired
// straight to the client, one interrupt came and then none. The broker relays it and unmasks the line after
// the client's next BAR access (lease-intx.ts).
// A lease that ends with its interrupt unserviced leaves the line masked in vfio-pci (a new trigger does not
// unmask it): the next lease's relay unmasks it when wired, or that lease would hear nothing. That line is
// still raised, so the next lease hears it at once, before any raise of its own: an interrupt no raise can
// tell from its own, so every interrupt a lease sees is counted from before its vector is wired, and each
// raise must bring exactly the ones it explains, the status read back at its interrupt its own bit alone.
test('broker: the generic driver over edu: its INTx reaches the client at every raise, not only the first, and the next lease too', async () => {
  await withGenericEdu(true, async (broker, socket) => {
    /** A lease whose interrupts are counted from before its vector is wired (deferSetup: none is missed). */
    const counted = async () => {
      const lease = await connect({ socket, deferSetup: true });
      const seen = { total: 0, vectors: new Set<number>() };
      // Summed: posts the client's eventfd took before it was read come as one event.
      lease.on('interrupt', (vector: number, count: bigint) => {
        seen.vectors.add(vector);
        seen.total += Number(count);
      });
      await lease.ready;
      return { lease, seen };
    };
    type Counted = Awaited<ReturnType<typeof counted>>;
    const status = async ({ lease }: Counted) => {
      const v = await lease.client.regionRead(BAR0, EDU.IRQ_STATUS, 4);
      return new DataView(v.buffer, v.byteOffset).getUint32(0, true);
    };
    /** Waits for the lease's `n`th interrupt, and fails on any more than `n` by then. */
    const heard = async (l: Counted, n: number, what: string) => {
      await until(what, () => l.seen.total >= n);
      assert.equal(l.seen.total, n, `${what}: ${n} interrupts so far, not more`);
      assert.deepEqual([...l.seen.vectors], [0], "all on the lease's vector 0");
    };
    /**
     * Raises edu's interrupt bit `i`: the lease hears one interrupt after it (none was due before it), and the
     * status it then reads is bit `i` alone. That read, the line still raised, has the line signalled once more
     * (one interrupt more per access, lease-intx.ts): waited for, so none is left in flight for the next raise.
     */
    const raise = async (l: Counted, i: number, ack = true) => {
      const before = l.seen.total;
      await l.lease.client.regionWrite(BAR0, EDU.IRQ_RAISE, u32(1 << i));
      await heard(l, before + 1, `interrupt ${i} reaching the client`);
      assert.equal(await status(l), 1 << i, `the status at interrupt ${i} is its raise's bit alone`);
      await heard(l, before + 2, `interrupt ${i}'s line, still raised at the status read, signalled again`);
      if (ack) await l.lease.client.regionWrite(BAR0, EDU.IRQ_ACK, u32(1 << i)); // the line drops
    };
    const first = await counted();
    try {
      // What earlier tests may have left in the status (a DMA's completion, raised by MSI: not on the line).
      const left = await status(first);
      if (left) await first.lease.client.regionWrite(BAR0, EDU.IRQ_ACK, u32(left));
      assert.equal(first.seen.total, 0, 'no interrupt before the first raise');
      for (let i = 1; i <= 3; i++) await raise(first, i);
      await raise(first, 4, false); // its lease ends with the line raised and masked
    } finally {
      first.lease.close();
    }
    await until('the first lease to end', () => broker.leases.all().length === 0);
    const next = await counted();
    try {
      // The relay unmasks the line as it is wired; still raised, it is signalled at once: one interrupt, and
      // the status is what the first lease left.
      await heard(next, 1, 'the line the first lease left raised, signalled to the next lease');
      assert.equal(await status(next), 1 << 4, "the first lease's last raise, unacknowledged");
      await heard(next, 2, 'the line, still raised at the status read, signalled again');
      await next.lease.client.regionWrite(BAR0, EDU.IRQ_ACK, u32(1 << 4)); // what the last lease left
      for (let i = 5; i <= 6; i++) await raise(next, i);
      assert.equal(await status(next), 0, 'every raise acknowledged');
      assert.equal(next.seen.total, 6, 'the stale line twice, then two per raise: nothing unexplained');
    } finally {
      next.lease.close();
    }
  });
});
