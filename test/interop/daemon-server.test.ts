// libvfio-user's `server` sample (patched: BAR1 of 0x4000 bytes, see
// scripts/peers/libvfio-user-server-bar1.patch) behind `devlease daemon`:
// its registers through the lease, a refusal passed on with its errno, and
// its DMA into a client's memory mapped through the lease.
//
// What triggers the sample's DMA (samples/server.c): a write of a time_t T to
// BAR0 arms a timer for T (wall-clock seconds); when it fires the sample
// raises INTx, then runs do_dma_io() twice, each writing 4 KiB as four
// 1 KiB chunks filled with 'A', 'B', 'C', 'D' and reading it back (2 KiB at a
// time) to compare CRCs: first into the second DMA region mapped, through its
// own mapping of the client's fd; then into the first DMA region mapped, with
// VFIO_USER_DMA_WRITE / DMA_READ messages to its client (the broker). Any
// failure (no INTx eventfd, a refused DMA message, a CRC mismatch) makes the
// sample exit.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { connect } from '../../src/client/lease.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { Peers, until } from './helpers/peers.js';

const leakCheck = trackFdLeaks();
const peers = new Peers();
after(async () => {
  await peers.close();
  await leakCheck();
});

function int64(v: bigint): Uint8Array {
  const b = Buffer.alloc(8);
  b.writeBigInt64LE(v);
  return b;
}

function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** What do_dma_io() leaves in each DMA region: 1 KiB each of 'A', 'B', 'C', 'D'. */
const DMA_PATTERN = Uint8Array.from({ length: 4096 }, (_, i) => 0x41 + (i >> 10));

test('server sample behind devlease daemon: BAR0 (a time_t) and BAR1 through the lease; a refused write keeps EINVAL', async () => {
  const sock = join(peers.dir, 'server-regs.sock');
  const server = await peers.sample('server', sock);
  const daemon = await peers.daemon(sock, join(peers.dir, 'run-regs'));
  const lease = await connect({ socket: daemon.sockets.device! });
  try {
    const sizes = new Map(lease.info.regions.map((r) => [r.index, r.size]));
    assert.equal(sizes.get(0), 8n, 'BAR0: one time_t');
    assert.equal(sizes.get(1), 0x4000n, 'BAR1 as patched');

    // BAR0 reads the seconds since the time_t last written there: 0 at start, so about now.
    const now = BigInt(Math.floor(Date.now() / 1000));
    const t0 = (await lease.client.regionRead(0, 0, 8)).readBigInt64LE(0);
    assert.ok(t0 >= now - 2n && t0 <= now + 2n, `BAR0 reads ${t0}, expected about ${now}`);
    // A write arms the sample's timer for that time (a past time is refused: setitimer EINVAL); one a day
    // ahead never fires here, and reads back as the (negative) time since it.
    await lease.client.regionWrite(0, 0, int64(now + 86_400n));
    const t1 = (await lease.client.regionRead(0, 0, 8)).readBigInt64LE(0);
    assert.ok(t1 >= -86_401n && t1 <= -86_397n, `BAR0 reads ${t1} s after writing now + 1 day`);

    // BAR1: memory. (The sample's read handler copies from BAR1's start whatever the offset.)
    const data = Uint8Array.from({ length: 256 }, (_, i) => (i * 13 + 1) & 0xff);
    await lease.client.regionWrite(1, 0, data);
    assert.deepEqual(new Uint8Array(await lease.client.regionRead(1, 0, 256)), data);

    // The sample's BAR0 takes 8-byte accesses only; it refuses this with EINVAL, which must reach us as such.
    await assert.rejects(
      lease.client.regionWrite(0, 0, new Uint8Array(4)),
      (err: Error & { code?: string; errno?: number }) => {
        assert.equal(err.code, 'EINVAL', err.message);
        assert.equal(err.errno, 22);
        return true;
      },
    );
  } finally {
    lease.close();
  }
  await until('the lease to be released', () => daemon.events.some((e) => e.event === 'released'));
  assert.ok(server.running, `the server sample still runs: ${server.stderr().slice(-2000)}`);
  assert.ok(daemon.running, `the daemon still runs: ${daemon.stderr()}`);
});

test('server sample DMAs into client memory mapped through the lease, directly and by DMA_WRITE messages, byte for byte', async () => {
  const sock = join(peers.dir, 'server-dma.sock');
  const server = await peers.sample('server', sock);
  const daemon = await peers.daemon(sock, join(peers.dir, 'run-dma'));
  const lease = await connect({ socket: daemon.sockets.device! });
  try {
    // The sample has INTx only; the lease carries it as vector 0 (and the sample exits if it has no eventfd).
    assert.equal(lease.info.vectors, 1, 'the INTx line is the lease vector');
    // Mapped in this order, `first` is the sample's DMA region 0 (messages), `second` its region 1 (direct).
    const first = await lease.dma.alloc(4096);
    const second = await lease.dma.alloc(4096);
    first.u8.fill(0xee);
    second.u8.fill(0xee);

    const irq = lease.nextInterrupt();
    // Arm the sample's timer: T is wall-clock seconds, 2 s ahead so it cannot round to "now" (which disarms).
    await lease.client.regionWrite(0, 0, int64(BigInt(Math.floor(Date.now() / 1000) + 2)));
    assert.equal(await within(10_000, 'the INTx interrupt on lease vector 0', irq), 0);

    const done = () =>
      Buffer.compare(first.u8, DMA_PATTERN) === 0 && Buffer.compare(second.u8, DMA_PATTERN) === 0;
    await until('both DMA regions to hold the pattern', () => done() || !server.running, 10_000).catch(
      () => {},
    );
    assert.ok(server.running, `the server sample exited: ${server.stderr().slice(-3000)}`);
    assert.deepEqual(second.u8, DMA_PATTERN, "direct DMA (through the sample's mapping of our memfd)");
    assert.deepEqual(first.u8, DMA_PATTERN, 'DMA by VFIO_USER_DMA_WRITE messages, served by the broker');
    // The sample read both back and compared CRCs before logging success (with -v).
    await until('the sample to log both CRC checks', () => /MESSAGE success/.test(server.stderr()), 5000);
    assert.match(server.stderr(), /do_dma_io: DIRECT success/);

    await first.free();
    await second.free();
  } finally {
    lease.close();
  }
  await until('the lease to be released', () => daemon.events.some((e) => e.event === 'released'));
  assert.ok(server.running, `the server sample still runs: ${server.stderr().slice(-2000)}`);
});
