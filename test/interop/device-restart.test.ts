// A vfio-user device server that dies and comes back under a running broker
// (issue 12, item 8): the broker stays up, reclaims the lease with an ERR
// notice, refuses new leases with the reason while the device is gone, and
// leases again once the device's socket is back.
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { connect, type Lease } from '../../src/client/lease.js';
import { EventFd } from '../../src/sys/index.js';
import {
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_PCI_ERR_IRQ_INDEX,
} from '../../src/vfio/uapi/vfio.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { Peers, until } from './helpers/peers.js';

const leakCheck = trackFdLeaks();
const peers = new Peers();
after(async () => {
  await peers.close();
  await leakCheck();
});

const GPIO_BAR = 2;
type LeaseErr = Error & { code?: string; reason?: string };

test('gpio server killed and restarted under a running broker: reclaim with notice, refusal with reason, leased again', async () => {
  const gpioSock = join(peers.dir, 'gpio.sock');
  const gpio = await peers.sample('gpio-pci-idio-16', gpioSock);
  const daemon = await peers.daemon(gpioSock);
  const socket = daemon.sockets.device!;

  // The lease as a plain vfio-user session, with our own ERR eventfd, so the notice is counted for certain
  // (a Lease object would also close on the hang-up that follows it, and might not look at the eventfd first).
  const client = await VfioUserClient.connect(socket, { capabilities: { devlease: { request: {} } } });
  const errNotice = new EventFd();
  try {
    const leaseId = (client.serverCapabilities.raw.devlease as { lease?: string } | undefined)?.lease;
    assert.ok(leaseId, 'the broker named the lease in its VERSION reply');
    await client.setIrqs({
      flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
      index: VFIO_PCI_ERR_IRQ_INDEX,
      start: 0,
      count: 1,
      fds: [errNotice.fd],
    });
    await client.regionWrite(GPIO_BAR, 0x0, Uint8Array.of(0x01));
    assert.equal((await client.regionRead(GPIO_BAR, 0x1, 1))[0], 0xfe, 'the device works through the lease');

    await gpio.stop('SIGKILL');

    await until('the broker to end the lease session', () => client.closed, 10_000);
    assert.ok((errNotice.read() ?? 0n) >= 1n, 'the lease got an ERR notice before its session ended');
    await until('the reclaim to finish', () =>
      daemon.events.some((e) => e.event === 'released' && e.lease === leaseId),
    );
    const reclaim = daemon.events.find((e) => e.event === 'reclaim' && e.lease === leaseId);
    assert.ok(reclaim, `audit has the reclaim: ${JSON.stringify(daemon.events)}`);
  } finally {
    client.close();
    errNotice.close();
  }
  assert.ok(daemon.running, `the broker stays up when its device goes: ${daemon.stderr()}`);

  // While the device is gone: refused, with the reason.
  for (let i = 0; i < 2; i++) {
    await assert.rejects(connect({ socket, timeoutMs: 5000 }), (err: LeaseErr) => {
      assert.ok(['EAGAIN', 'ENODEV'].includes(err.code ?? ''), `code ${err.code}: ${err.message}`);
      assert.match(err.reason ?? '', /device/i, `the refusal says why: ${err.reason}`);
      return true;
    });
  }
  assert.ok(daemon.running, `the broker still runs: ${daemon.stderr()}`);

  // The backend restarts at the same path (libvfio-user cannot bind over the dead server's socket file).
  rmSync(gpioSock, { force: true });
  const gpio2 = await peers.sample('gpio-pci-idio-16', gpioSock);
  let lease: Lease | null = null;
  await until(
    'a lease to be granted after the device came back',
    async () => {
      try {
        lease = await connect({ socket, timeoutMs: 5000 });
        return true;
      } catch (err) {
        const code = (err as LeaseErr).code;
        if (code === 'EAGAIN' || code === 'ENODEV') return false;
        throw err;
      }
    },
    20_000,
  );
  const l = lease! as Lease;
  try {
    // A new device process: every pin count back at 0.
    assert.equal((await l.client.regionRead(GPIO_BAR, 0x1, 1))[0], 0xff);
    await l.client.regionWrite(GPIO_BAR, 0x4, Uint8Array.of(0x01));
    assert.equal((await l.client.regionRead(GPIO_BAR, 0x5, 1))[0], 0xfe);
  } finally {
    l.close();
  }
  assert.ok(gpio2.running, gpio2.stderr());
  assert.deepEqual(await daemon.stop('SIGTERM'), { code: 0, signal: null }, daemon.stderr());
});
