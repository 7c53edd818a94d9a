// The INTx relay (src/broker/lease-intx.ts) on its own, with real eventfds: the device's line signals the
// broker's eventfd; the client's is signalled; the line is unmasked once, after the client's next access, and
// not again until it fires again. Against a real automasking line (vfio-pci INTx) in the guest:
// test/kernel/guest/edu-generic.test.ts.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { IntxRelay } from '../../src/broker/lease-intx.js';
import { EventFd } from '../../src/sys/eventfd.js';
import type { Fd } from '../../src/sys/fd.js';
import { native } from '../../src/sys/native.js';
import { until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

test('a relayed INTx: each interrupt reaches the client; the next access unmasks the line once', async () => {
  const calls: string[] = [];
  let line: Fd | null = null;
  const device = {
    async setIrqs(index: number, start: number, fds: (Fd | null)[]) {
      calls.push(`set ${index} ${start}`);
      line = fds[0] ?? null;
    },
    async unmaskIrq(index: number, start: number) {
      calls.push(`unmask ${index} ${start}`);
    },
  };
  const client = new EventFd();
  const clientFd = client.fd.dup();
  const relay = await IntxRelay.wire(device, 0, clientFd, (m) => calls.push(`log ${m}`));
  try {
    // Wired, then unmasked: vfio-pci keeps a line masked across a new trigger, and one that fired for a previous
    // relay and was never serviced would otherwise stay masked for this one.
    assert.deepEqual(calls, ['set 0 0', 'unmask 0 0']);
    assert.ok(line, "the broker's own eventfd is wired to the line");
    relay.serviced();
    assert.equal(calls.length, 2, 'nothing to unmask before the line fired');
    const unmasks = () => calls.filter((c) => c.startsWith('unmask')).length;
    for (let i = 1; i <= 2; i++) {
      native.eventfdWrite((line as Fd).fd, 1n); // the device raises the line (the kernel masks it)
      await until(`interrupt ${i} at the client`, () => client.read() !== null);
      assert.equal(unmasks(), i, 'the line stays masked until the client accesses the device');
      relay.serviced();
      relay.serviced();
      assert.deepEqual(calls.slice(-1), ['unmask 0 0']);
      assert.equal(unmasks(), i + 1, 'one unmask per interrupt');
    }
  } finally {
    relay.close();
    relay.close();
    client.close();
  }
  assert.ok(clientFd.closed, "the relay closed the client's eventfd it owned");
});

test('a relay whose wiring fails closes what it was given', async () => {
  const device = {
    async setIrqs() {
      throw Object.assign(new Error('EINVAL'), { code: 'EINVAL' });
    },
    async unmaskIrq() {},
  };
  const client = new EventFd();
  await assert.rejects(
    IntxRelay.wire(device, 0, client.fd, () => {}),
    /EINVAL/,
  );
  assert.ok(client.fd.closed);
});
