// devlease's own vfio-user client (VfioUserClient) against libvfio-user's
// samples directly, no broker between: the negotiation, the device and
// region queries, region access, and libvfio-user's error replies (some
// carry payload bytes after the header: issue 12, item 2).

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { VfioUserCallError } from '../../src/errors.js';
import { Mapping } from '../../src/sys/index.js';
import {
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
} from '../../src/vfio/uapi/vfio.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { Peers } from './helpers/peers.js';

const leakCheck = trackFdLeaks();
const peers = new Peers();
after(async () => {
  await peers.close();
  await leakCheck();
});

const RW = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
const GPIO_BAR = 2; // gpio-pci-idio-16: BAR2, 0x100 bytes of registers, not mappable

/** A call that must fail: returns the error for inspection. */
async function refused(what: string, p: Promise<unknown>): Promise<VfioUserCallError> {
  try {
    await p;
  } catch (err) {
    return err as VfioUserCallError;
  }
  assert.fail(`${what} succeeded; libvfio-user refuses it`);
}

/** An error libvfio-user sent: its errno, read right, and no reason text (none was negotiated). */
function assertPlainError(err: VfioUserCallError, command: string, code: string, errno: number): void {
  assert.equal(err.code, code, `code of ${err.message}`);
  assert.equal(err.errno, errno);
  assert.equal(err.command, command);
  // libvfio-user never accepted devlease's error_reason extension: its payload bytes are not a reason.
  assert.equal(err.reason, undefined, `reason ${JSON.stringify(err.reason)} from a peer that sends none`);
  assert.doesNotMatch(err.message, /[\x00-\x08\x0e-\x1f]/, `control bytes in ${JSON.stringify(err.message)}`);
  assert.equal(err.message, `${command} failed: ${code} (errno ${errno})`);
}

test('gpio-pci-idio-16: VERSION, GET_INFO, REGION_INFO, IRQ_INFO and config space, with devlease client', async () => {
  const sock = join(peers.dir, 'gpio-info.sock');
  const gpio = await peers.sample('gpio-pci-idio-16', sock);
  const client = await VfioUserClient.connect(sock);
  try {
    // We propose 0.0; libvfio-user (0.2) answers with the smaller minor, and its own limits.
    assert.deepEqual(client.version, { major: 0, minor: 0 });
    assert.equal(client.serverCapabilities.maxMsgFds, 8);
    assert.equal(client.serverCapabilities.maxDataXferSize, 1 << 20);

    const info = await client.deviceInfo();
    assert.equal(info.flags, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
    assert.equal(info.num_regions, 9);
    assert.equal(info.num_irqs, 5);

    const bar = await client.regionInfo(GPIO_BAR);
    assert.equal(bar.size, 0x100n);
    assert.equal(bar.flags & (RW | VFIO_REGION_INFO_FLAG_MMAP), RW, 'BAR2 is read-write, not mappable');
    assert.equal(bar.fd, null);
    assert.equal((await client.regionInfo(0)).size, 0n, 'BAR0 is absent');
    const cfg = await client.regionInfo(VFIO_PCI_CONFIG_REGION_INDEX);
    assert.ok(cfg.size >= 256n, `config region of ${cfg.size} bytes`);

    assert.equal((await client.irqInfo(VFIO_PCI_INTX_IRQ_INDEX)).count, 1);

    const ids = await client.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, 0, 4);
    assert.equal(ids.readUInt16LE(0), 0x494f, 'vendor');
    assert.equal(ids.readUInt16LE(2), 0x0dc8, 'device');
  } finally {
    client.close();
  }
  assert.ok(gpio.running, `the gpio sample still runs: ${gpio.stderr()}`);
  await gpio.stop('SIGKILL');
});

test("gpio-pci-idio-16: its registers written and read back with devlease's client", async () => {
  const sock = join(peers.dir, 'gpio-regs.sock');
  await peers.sample('gpio-pci-idio-16', sock);
  const client = await VfioUserClient.connect(sock);
  try {
    // Writing a 1 to output bit i (register 0x0: pins 0-7, 0x4: pins 8-15) counts pin i up; input bit i
    // (0x1, 0x5) reads 1 when pin i's count is a multiple of 3. All counts start at 0.
    const input = async (reg: number) => (await client.regionRead(GPIO_BAR, reg, 1))[0];
    assert.equal(await input(0x1), 0xff);
    await client.regionWrite(GPIO_BAR, 0x0, Uint8Array.of(0x05));
    assert.equal(await input(0x1), 0xfa, 'pins 0 and 2 counted once');
    await client.regionWrite(GPIO_BAR, 0x0, Uint8Array.of(0x05));
    await client.regionWrite(GPIO_BAR, 0x0, Uint8Array.of(0x01));
    assert.equal(await input(0x1), 0xfb, 'pin 0 at 3 (bit set), pin 2 at 2');
    await client.regionWrite(GPIO_BAR, 0x4, Uint8Array.of(0x80));
    assert.equal(await input(0x5), 0x7f, 'pin 15 counted once');
    assert.equal(await input(0x1), 0xfb, 'pins 0-7 untouched by register 0x4');
  } finally {
    client.close();
  }
});

test('an error reply from libvfio-user is read right: the errno, and no reason text (none negotiated)', async () => {
  const sock = join(peers.dir, 'gpio-errors.sock');
  const gpio = await peers.sample('gpio-pci-idio-16', sock);
  const client = await VfioUserClient.connect(sock);
  try {
    // Past the end of BAR2 (0x100 bytes): libvfio-user refuses with EINVAL.
    const beyond = await refused('a read past BAR2', client.regionRead(GPIO_BAR, 0x100, 4));
    assertPlainError(beyond, 'VFIO_USER_REGION_READ', 'EINVAL', 22);
    const write = await refused('a write past BAR2', client.regionWrite(GPIO_BAR, 0xfe, new Uint8Array(4)));
    assertPlainError(write, 'VFIO_USER_REGION_WRITE', 'EINVAL', 22);
    // A region that does not exist (libvfio-user's own client checks this very reply).
    const bogus = await refused('region 0xdead', client.regionRead(0xdead, 0, 4));
    assertPlainError(bogus, 'VFIO_USER_REGION_READ', 'EINVAL', 22);
    // The connection survives error replies: the next call works.
    assert.equal((await client.regionRead(GPIO_BAR, 0x1, 1))[0], 0xff);
  } finally {
    client.close();
  }
  assert.ok(gpio.running, `the gpio sample still runs: ${gpio.stderr()}`);
});

test("server: BAR1's sparse-mmap capability and fd, its memory seen through both; BAR0 refuses a 4-byte access", async () => {
  const sock = join(peers.dir, 'server-info.sock');
  const server = await peers.sample('server', sock);
  const client = await VfioUserClient.connect(sock);
  try {
    const bar0 = await client.regionInfo(0);
    assert.equal(bar0.size, 8n, 'BAR0 holds one time_t');
    assert.equal(bar0.fd, null);

    // A first argsz too small for the capability chain: the client retries with the argsz asked for.
    const bar1 = await client.regionInfo(1, { argsz: 32 });
    try {
      assert.equal(bar1.size, 0x4000n, 'BAR1 as patched (0x3000 in the unpatched sample)');
      const want = RW | VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS;
      assert.equal(bar1.flags & want, want, 'BAR1 is read-write, mappable, with capabilities');
      assert.deepEqual(bar1.caps.sparseMmap, [
        { offset: 0n, size: 0x1000n },
        { offset: 0x2000n, size: 0x1000n },
      ]);
      assert.ok(bar1.fd, 'BAR1 comes with its fd');
      const map = Mapping.map(bar1.fd, { length: 0x1000, offset: Number(bar1.offset) });
      try {
        const data = Uint8Array.from({ length: 64 }, (_, i) => (i * 7 + 3) & 0xff);
        await client.regionWrite(1, 0, data);
        assert.deepEqual(map.u8.subarray(0, 64), data, 'a REGION_WRITE lands in the memory the fd maps');
        map.u8.set(data.map((b) => b ^ 0xff));
        // (The sample's BAR1 read handler copies from the start of BAR1 whatever the offset: read at 0.)
        assert.deepEqual(
          new Uint8Array(await client.regionRead(1, 0, 64)),
          data.map((b) => b ^ 0xff),
          'a store through the mapping reads back with REGION_READ',
        );
      } finally {
        map.unmap();
      }
    } finally {
      bar1.fd?.close();
    }

    // BAR0: the seconds since the time_t last written (0 at start: the current time).
    const now = BigInt(Math.floor(Date.now() / 1000));
    const t = (await client.regionRead(0, 0, 8)).readBigInt64LE(0);
    assert.ok(t >= now - 2n && t <= now + 2n, `BAR0 reads ${t}, expected about ${now}`);
    // Any access but 8 bytes at offset 0 is refused by the sample's handler. Unlike the library's own bounds
    // check, that error reply carries the reply buffer libvfio-user had prepared (struct and data, zeros):
    // payload bytes that are no reason text.
    const short = await refused('a 4-byte BAR0 read', client.regionRead(0, 0, 4));
    assertPlainError(short, 'VFIO_USER_REGION_READ', 'EINVAL', 22);
    const shortWrite = await refused('a 4-byte BAR0 write', client.regionWrite(0, 0, new Uint8Array(4)));
    assertPlainError(shortWrite, 'VFIO_USER_REGION_WRITE', 'EINVAL', 22);
  } finally {
    client.close();
  }
  // The server sample serves one client and exits when it goes.
  const end = await server.closed;
  assert.equal(end.code, 0, `server exit: ${server.stderr()}`);
});
