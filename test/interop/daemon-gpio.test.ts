// libvfio-user's gpio-pci-idio-16 behind `devlease daemon`: the broker owns
// a stock vfio-user device it has no driver for, the generic driver leases it
// whole, and a devlease client reaches its registers through the lease.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { connect } from '../../src/client/lease.js';
import { VFIO_PCI_CONFIG_REGION_INDEX } from '../../src/vfio/uapi/vfio.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { listeningSocketType, Peers, until } from './helpers/peers.js';

const leakCheck = trackFdLeaks();
const peers = new Peers();
after(async () => {
  await peers.close();
  await leakCheck();
});

const GPIO_BAR = 2;

test('gpio-pci-idio-16 behind devlease daemon: leased whole, its registers read and written through the lease', async () => {
  const gpioSock = join(peers.dir, 'gpio.sock');
  const gpio = await peers.sample('gpio-pci-idio-16', gpioSock);
  const daemon = await peers.daemon(gpioSock);
  const socket = daemon.sockets.device;
  assert.ok(
    socket,
    `the generic driver's lease kind 'device' has a socket: ${JSON.stringify(daemon.sockets)}`,
  );
  // Every vfio-user socket of devlease is a stream socket, as the peers' are.
  assert.equal(listeningSocketType(socket), 'stream', `${socket} is not SOCK_STREAM`);
  assert.equal(listeningSocketType(gpioSock), 'stream');

  const start = daemon.events.find((e) => e.event === 'start');
  assert.equal(start?.driver, 'generic', `audit start: ${JSON.stringify(start)}`);

  const lease = await connect({ socket });
  try {
    assert.equal(lease.info.kind, 'device');
    const bar = lease.info.regions.find((r) => r.index === GPIO_BAR);
    assert.ok(
      bar,
      `BAR2 is in the lease: ${JSON.stringify(lease.info.regions, (_, v) => (typeof v === 'bigint' ? `${v}` : v))}`,
    );
    assert.equal(bar.size, 0x100n);
    assert.equal(lease.info.isolation.regions?.level, 'cooperative', 'whole regions of an unknown device');

    // The lease's config space carries the device's ids.
    const ids = await lease.client.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, 0, 4);
    assert.equal(ids.readUInt16LE(0), 0x494f, 'vendor');
    assert.equal(ids.readUInt16LE(2), 0x0dc8, 'device');

    // BAR2 is not mappable: every access goes through the broker to the device.
    assert.throws(() => lease.region(GPIO_BAR), { code: 'ENOENT' });
    const input = async (reg: number) => (await lease.client.regionRead(GPIO_BAR, reg, 1))[0];
    assert.equal(await input(0x1), 0xff, 'every pin count at 0');
    await lease.client.regionWrite(GPIO_BAR, 0x0, Uint8Array.of(0x03));
    assert.equal(await input(0x1), 0xfc, 'pins 0 and 1 counted once');
    await lease.client.regionWrite(GPIO_BAR, 0x0, Uint8Array.of(0x03));
    await lease.client.regionWrite(GPIO_BAR, 0x0, Uint8Array.of(0x01));
    assert.equal(await input(0x1), 0xfd, 'pin 0 at 3 (bit set), pin 1 at 2');
    await lease.client.regionWrite(GPIO_BAR, 0x4, Uint8Array.of(0x10));
    assert.equal(await input(0x5), 0xef, 'pin 12 counted once');
  } finally {
    lease.close();
  }
  await until('the lease to be released', () => daemon.events.some((e) => e.event === 'released'));
  assert.ok(gpio.running, `the gpio sample still runs: ${gpio.stderr()}`);
  assert.ok(daemon.running, `the daemon still runs: ${daemon.stderr()}`);

  // The device is leased again after the release, to the next client.
  const again = await connect({ socket });
  try {
    assert.equal((await again.client.regionRead(GPIO_BAR, 0x5, 1))[0], 0xef, 'the same device, state kept');
  } finally {
    again.close();
  }
  assert.deepEqual(await daemon.stop('SIGTERM'), { code: 0, signal: null }, daemon.stderr());
});

test('an access past BAR2 through the lease is refused with EINVAL, and the lease keeps working', async () => {
  const gpioSock = join(peers.dir, 'gpio-refuse.sock');
  await peers.sample('gpio-pci-idio-16', gpioSock);
  const daemon = await peers.daemon(gpioSock, join(peers.dir, 'run-refuse'));
  const lease = await connect({ socket: daemon.sockets.device! });
  try {
    // (A refusal by the device itself, passed on with its errno, is in daemon-server.test.ts: this device
    // refuses nothing in bounds.)
    await assert.rejects(
      lease.client.regionRead(GPIO_BAR, 0x100, 4),
      (err: Error & { code?: string; errno?: number }) => {
        assert.equal(err.code, 'EINVAL', err.message);
        assert.equal(err.errno, 22);
        return true;
      },
    );
    await assert.rejects(lease.client.regionWrite(GPIO_BAR, 0xfe, new Uint8Array(4)), { code: 'EINVAL' });
    assert.equal((await lease.client.regionRead(GPIO_BAR, 0x1, 1))[0], 0xff, 'the lease still works');
  } finally {
    lease.close();
  }
});
