// Slice fds prepared ahead of a grant (VfioUserDevice.prepareSliceFds): the
// next sliceFds() of the same range takes them without asking the device, and
// what it takes is the slice's current memory — never the memory a revoke
// since then has let go of.
import assert from 'node:assert/strict';
import { fstatSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { VfioUserDevice } from '../../src/device/vfio-user-device.js';
import { BAR2 } from '../../src/hw/sa1/regs.js';
import { spawnSimulator } from '../../src/sim/host/child.js';
import type { Fd } from '../../src/sys/fd.js';
import { VFIO_DEVICE_FEATURE_DMA_BUF } from '../../src/vfio/uapi/vfio.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const CAP = 8;
const STRIDE = 0x10000n; // the simulator's queue stride
const page = (q: number) => ({ offset: BigInt(q) * STRIDE, length: STRIDE });
/** The memory an fd maps: the backing's inode (a revoke moves the slice to a new one). */
const ino = (fd: Fd) => fstatSync(fd.fd).ino;

async function withDevice(fn: (dev: VfioUserDevice, asks: () => number) => Promise<void>) {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-prepared-'));
  const sim = await spawnSimulator({ socketPath: join(dir, 'sim.sock'), numQueues: 2 });
  const dev = await VfioUserDevice.connect(sim.socketPath);
  // Count the slice-fd requests that reach the device.
  let n = 0;
  const client = dev.client;
  const feature = client.feature.bind(client);
  client.feature = (f, opts) => {
    if (f.feature === VFIO_DEVICE_FEATURE_DMA_BUF) n++;
    return feature(f, opts);
  };
  try {
    await fn(dev, () => n);
  } finally {
    await dev.close();
    await sim.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A fresh slice fd of `q` straight from the device, to compare memories with; closed again. */
async function currentIno(dev: VfioUserDevice, q: number): Promise<bigint | number> {
  const [fd] = await dev.sliceFds(BAR2, [page(q)]);
  try {
    return ino(fd!);
  } finally {
    fd!.close();
  }
}

test('a prepared slice fd is handed out without a device request, and is the slice as it is now', async () => {
  await withDevice(async (dev, asks) => {
    const [old] = await dev.sliceFds(BAR2, [page(0)]);
    await dev.revokeSlice(old!);
    old!.close();
    dev.prepareSliceFds(BAR2, [page(0)], CAP);
    const before = asks();
    const [fd] = await dev.sliceFds(BAR2, [page(0)]);
    assert.equal(asks(), before, 'the grant-time sliceFds() asked the device nothing');
    try {
      assert.equal(ino(fd!), await currentIno(dev, 0), "the prepared fd maps the slice's current memory");
    } finally {
      fd!.close();
    }
  });
});

test('a revoke after the prepare: the next sliceFds() asks the device again', async () => {
  await withDevice(async (dev, asks) => {
    const [held] = await dev.sliceFds(BAR2, [page(1)]);
    dev.prepareSliceFds(BAR2, [page(1)], CAP);
    // Someone's fd of the same slice is revoked after the prepare: what was prepared is the old memory.
    await dev.revokeSlice(held!);
    held!.close();
    const before = asks();
    const [fd] = await dev.sliceFds(BAR2, [page(1)]);
    assert.equal(asks(), before + 1, 'the device was asked for the slice again');
    try {
      assert.equal(ino(fd!), await currentIno(dev, 1), "the fd handed out maps the slice's current memory");
    } finally {
      fd!.close();
    }
  });
});

test('fds of a many-range sliceFds() are known: a revoke of one drops only its own slice', async () => {
  await withDevice(async (dev, asks) => {
    const both = await dev.sliceFds(BAR2, [page(0), page(1)]);
    dev.prepareSliceFds(BAR2, [page(0)], CAP);
    dev.prepareSliceFds(BAR2, [page(1)], CAP);
    await dev.revokeSlice(both[0]!); // page 0 moves to new memory; page 1 does not
    for (const fd of both) fd.close();
    const before = asks();
    const [one] = await dev.sliceFds(BAR2, [page(1)]);
    assert.equal(asks(), before, "page 1's prepared fd is still taken: its slice was not revoked");
    const [zero] = await dev.sliceFds(BAR2, [page(0)]);
    assert.equal(asks(), before + 1, 'page 0 is asked of the device again');
    try {
      assert.equal(ino(zero!), await currentIno(dev, 0), "page 0's fd maps its current memory");
      assert.equal(ino(one!), await currentIno(dev, 1), "page 1's fd maps its current memory");
    } finally {
      zero!.close();
      one!.close();
    }
  });
});

test('a revoke that fails drops what was prepared behind it: the slice may still be the old memory', async () => {
  await withDevice(async (dev, asks) => {
    const [held] = await dev.sliceFds(BAR2, [page(0)]);
    // The device refuses this one revoke: the slice keeps its memory, which `held` still maps.
    const client = dev.client;
    const feature = client.feature;
    client.feature = () => {
      client.feature = feature;
      return Promise.reject(Object.assign(new Error('test: revoke refused'), { code: 'EIO' }));
    };
    const revoked = dev.revokeSlice(held!);
    dev.prepareSliceFds(BAR2, [page(0)], CAP); // a reclaim's, behind the revoke
    await assert.rejects(revoked, /revoke refused/);
    const before = asks();
    const [fd] = await dev.sliceFds(BAR2, [page(0)]);
    assert.equal(asks(), before + 1, 'the prepared fd is not handed out: the device is asked again');
    fd!.close();
    held!.close();
  });
});

test('prepared slice fds are closed with the device, answered or not', async () => {
  await withDevice(async (dev) => {
    dev.prepareSliceFds(BAR2, [page(0)], CAP);
    const [fd] = await dev.sliceFds(BAR2, [page(1)]); // page 0's answer has arrived by now (in order)
    fd!.close();
    dev.prepareSliceFds(BAR2, [page(1)], CAP); // still in flight at close()
  });
  // The file's fd-leak check (after) fails if either stayed open.
});

test('at most `cap` prepared fds: a prepare beyond it is not asked, and 0 prepares nothing', async () => {
  await withDevice(async (dev, asks) => {
    assert.equal(dev.prepareSliceFds(BAR2, [page(0)], 0), false, 'cap 0: off');
    assert.equal(dev.prepareSliceFds(BAR2, [page(0)], 1), true);
    const before = asks();
    assert.equal(dev.prepareSliceFds(BAR2, [page(1)], 1), false, 'a second one is over the cap');
    assert.equal(asks(), before, 'and was not asked of the device');
    assert.equal(dev.preparedSliceFdCount, 1);
    const [fd] = await dev.sliceFds(BAR2, [page(0)]);
    fd!.close();
    assert.equal(dev.preparedSliceFdCount, 0, 'taken: the cap has room again');
    assert.equal(dev.prepareSliceFds(BAR2, [page(1)], 1), true);
  });
});

for (const [what, drop] of [
  ['a device reset', (dev: VfioUserDevice) => dev.reset()],
  ['a new connection', (dev: VfioUserDevice) => dev.reconnect()],
  ['a handover of the connection', async (dev: VfioUserDevice) => void dev.handover(() => 0)],
] as const) {
  test(`${what} drops what is prepared (closing its fds)`, async () => {
    await withDevice(async (dev) => {
      dev.prepareSliceFds(BAR2, [page(0)], CAP);
      const [fd] = await dev.sliceFds(BAR2, [page(1)]); // page 0's answer has arrived by now (in order)
      fd!.close();
      await drop(dev);
      assert.equal(dev.preparedSliceFdCount, 0);
      assert.equal(dev.hasPreparedSliceFds(BAR2, [page(0)]), false);
    });
    // The file's fd-leak check (after) fails if the prepared fd stayed open.
  });
}
