// libvfio-user's gpio-pci-idio-16 behind `devlease daemon`, upgraded live: the generic driver hands its state over
// (what it read at boot, the lease, a quarantine) and the new broker checks the stock device still agrees. The
// lease carries on through the upgrade, on the same connection, and the device keeps what the lease did to it.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { adminRequest } from '../../src/cli/admin.js';
import { connect } from '../../src/client/lease.js';
import type { PidFd } from '../../src/sys/pidfd.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { confirmedPidfd, signal } from '../helpers/pidfd.js';
import { Peers, until } from './helpers/peers.js';

const leakCheck = trackFdLeaks();
const peers = new Peers();
after(async () => {
  await peers.close();
  await leakCheck();
});

const GPIO_BAR = 2;

test('gpio-pci-idio-16 behind devlease daemon: the generic driver is upgraded live, its lease carried on', async () => {
  const gpioSock = join(peers.dir, 'gpio-up.sock');
  const gpio = await peers.sample('gpio-pci-idio-16', gpioSock);
  const daemon = await peers.daemon(gpioSock, join(peers.dir, 'run-up'));
  const socket = daemon.sockets.device!;
  const admin = join(dirname(socket), 'admin.sock');
  // biome-ignore lint/suspicious/noExplicitAny: admin answers are JSON of many shapes
  const request = (req: Record<string, unknown>): Promise<any> => adminRequest(admin, req, 60_000);
  /** The broker the upgrade started (not this process's child): held by pidfd, signalled through it, never its pid. */
  let newBroker: PidFd | null = null;
  const lease = await connect({ socket });
  let disconnected = false;
  lease.on('disconnected', () => {
    disconnected = true;
  });
  try {
    const input = async (reg: number) => (await lease.client.regionRead(GPIO_BAR, reg, 1))[0];
    await lease.client.regionWrite(GPIO_BAR, 0x0, Uint8Array.of(0x01));
    assert.equal(await input(0x1), 0xfe, 'pin 0 counted once');
    const oldPid = (await request({ op: 'status' })).pid as number;

    const r = await request({ op: 'upgrade', deadlineMs: 60_000 });
    assert.equal(r.upgraded, true);
    const s = await request({ op: 'status' });
    const newPid = s.pid as number;
    assert.notEqual(newPid, oldPid, 'a new broker process');
    assert.equal(s.upgrades, 1);
    newBroker = await confirmedPidfd(
      async () => (await request({ op: 'status' })).pid as number,
      'the new broker',
    );
    assert.equal(newBroker.pid, newPid);
    await until('the old broker to exit', () => !existsSync(`/proc/${oldPid}`));

    // The same lease, through the new broker, on the device as the lease left it.
    assert.equal(await input(0x1), 0xfe, 'the count kept');
    // Pin 0's bit is set again at its third count (daemon-gpio.test.ts). (The sample keeps its counts across a
    // reset; that nothing reset or recovered the device is the audit's word, below.)
    await lease.client.regionWrite(GPIO_BAR, 0x0, Uint8Array.of(0x01));
    assert.equal(await input(0x1), 0xfe, 'pin 0 at 2');
    await lease.client.regionWrite(GPIO_BAR, 0x0, Uint8Array.of(0x01));
    assert.equal(await input(0x1), 0xff, 'pin 0 at 3');
    const leases = (await request({ op: 'leases' })) as { id: string }[];
    assert.deepEqual(
      leases.map((l) => l.id),
      [lease.info.lease],
    );
    assert.equal(disconnected, false, 'the client saw no disconnect');
    const audit = (await request({ op: 'audit' })) as { event: string }[];
    assert.deepEqual(
      audit.filter((e) => /reset|recover|reclaim/.test(e.event)).map((e) => e.event),
      [],
      'no reset, recovery or reclaim on the way',
    );
    // The new broker's driver took the lease over: the device is still leased to it alone.
    await assert.rejects(connect({ socket }), /leased whole to another client/);
  } finally {
    lease.close();
    if (newBroker !== null) {
      const b = newBroker;
      if (signal(b, 'SIGTERM')) await until('the new broker to exit', () => !b.isAlive(), 30_000);
      b.close();
    }
  }
  assert.ok(gpio.running, `the gpio sample still runs: ${gpio.stderr()}`);
});
