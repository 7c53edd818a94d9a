// A driver of one's own, loaded from the config: examples/drivers/
// libvfio-user-server.ts drives libvfio-user's `server` sample (see
// daemon-server.test.ts for what the sample does). The config names the
// built module relative to the config file; the broker picks it over the
// generic driver, and a client leases the device as the example's `timer`
// kind: BAR0 (the sample's time_t register) and the sample's DMA into the
// client's memory.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { connect } from '../../src/client/lease.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { Peers, until } from './helpers/peers.js';

const leakCheck = trackFdLeaks();
const peers = new Peers();
after(async () => {
  await peers.close();
  await leakCheck();
});

const EXAMPLE = join(
  dirname(fileURLToPath(import.meta.url)),
  '..',
  '..',
  'examples',
  'drivers',
  'libvfio-user-server.js',
);

function int64(v: bigint): Uint8Array {
  const b = Buffer.alloc(8);
  b.writeBigInt64LE(v);
  return b;
}

/** What do_dma_io() leaves in each DMA region: 1 KiB each of 'A', 'B', 'C', 'D'. */
const DMA_PATTERN = Uint8Array.from({ length: 4096 }, (_, i) => 0x41 + (i >> 10));

test('the example driver, named in the config, leases the server sample: its BAR0 register and its DMA into client memory', async () => {
  const sock = join(peers.dir, 'server-own.sock');
  const server = await peers.sample('server', sock);
  const config = join(peers.dir, 'own-driver.toml');
  // Relative to the config file, as an operator writes it.
  writeFileSync(config, `[device]\ndriver = "${relative(peers.dir, EXAMPLE)}"\n`);
  const daemon = await peers.daemon(sock, join(peers.dir, 'run-own'), ['--config', config]);
  const start = daemon.events.find((e) => e.event === 'start');
  assert.equal(
    start?.driver,
    'libvfio-user-server',
    `the example drives the device: ${JSON.stringify(start)}`,
  );
  assert.deepEqual(Object.keys(daemon.sockets), ['timer'], 'the example offers its own lease kind');

  const lease = await connect({ socket: daemon.sockets.timer! });
  try {
    assert.equal(lease.info.vectors, 1, 'INTx is the lease vector');
    // The register: it reads seconds since the last time_t written; the driver's boot wrote now (disarm).
    const t0 = (await lease.client.regionRead(0, 0, 8)).readBigInt64LE(0);
    assert.ok(t0 >= 0n && t0 < 600n, `BAR0 reads ${t0} s since the driver disarmed the timer at boot`);

    const first = await lease.dma.alloc(4096);
    const second = await lease.dma.alloc(4096);
    first.u8.fill(0xee);
    second.u8.fill(0xee);
    const irq = lease.nextInterrupt();
    // A register write arms the sample's DMA: 2 s ahead so it cannot round to now.
    await lease.client.regionWrite(0, 0, int64(BigInt(Math.floor(Date.now() / 1000) + 2)));
    let timer: NodeJS.Timeout | undefined;
    const irqTimeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('no INTx on lease vector 0 within 15 s')), 15_000);
    });
    assert.equal(await Promise.race([irq, irqTimeout]).finally(() => clearTimeout(timer)), 0);
    const done = () =>
      Buffer.compare(first.u8, DMA_PATTERN) === 0 && Buffer.compare(second.u8, DMA_PATTERN) === 0;
    await until('both DMA regions to hold the pattern', () => done() || !server.running, 15_000).catch(
      () => {},
    );
    assert.ok(server.running, `the server sample exited: ${server.stderr().slice(-3000)}`);
    assert.deepEqual(second.u8, DMA_PATTERN, "direct DMA (the sample's mapping of our memory)");
    assert.deepEqual(first.u8, DMA_PATTERN, 'DMA by VFIO_USER_DMA_WRITE messages, served by the broker');
    await first.free();
    await second.free();
  } finally {
    lease.close();
  }
  await until('the lease to be released', () => daemon.events.some((e) => e.event === 'released'));
  assert.ok(daemon.running, `the daemon still runs: ${daemon.stderr()}`);
  assert.ok(server.running, `the server sample still runs: ${server.stderr().slice(-2000)}`);
});
