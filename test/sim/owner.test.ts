// Who owns the simulator, and what a connection costs it before VERSION: the
// owner is the connection whose VERSION succeeded (a silent one made first
// owns nothing, and its close leaves the owner's device alone); of two
// VERSIONs waiting for the owner's disconnect, one gets the device; a
// connection without VERSION is closed at its deadline, and one past the
// pending limits at once.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { type SimulatorHandle, type SimulatorOptions, startSimulator } from '../../src/sim/index.js';
import * as ds from '../../src/sim/model/datasheet.js';
import { MemFd, type StreamSocket } from '../../src/sys/index.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { encodeCommand } from '../../src/vfio/user/codec.js';
import { encodeVersion } from '../../src/vfio/user/messages.js';
import * as P from '../../src/vfio/user/protocol.js';
import { VFIO_USER_F_DMA_REGION_READ, VFIO_USER_F_DMA_REGION_WRITE } from '../../src/vfio/user/protocol.js';
import { connectVfioUser } from '../../src/vfio/user/transport.js';
import { openFdCount, trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';
import { BAR0, r32, w32 } from './helpers/driver.js';
import { clientBus, until } from './helpers/real.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

/** Run `fn` with a simulator on a fresh socket; closed, and its directory removed, afterwards. */
async function withSim(
  opts: Partial<SimulatorOptions>,
  fn: (s: SimulatorHandle) => Promise<void>,
): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'sa1-owner-'));
  try {
    const s = await startSimulator({
      numQueues: 2,
      devmemSize: 1 << 20,
      devmemGranule: 1 << 16,
      log: () => {},
      ...opts,
      socketPath: join(dir, 'sa1.sock'),
    });
    try {
      await fn(s);
    } finally {
      await s.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A connection that never sends anything; resolves once the simulator serves it. */
async function silent(s: SimulatorHandle): Promise<StreamSocket> {
  const before = s.owner().connections;
  const sock = connectVfioUser(s.socketPath);
  sock.on('error', () => {});
  await until(() => s.owner().connections > before, 'the simulator to serve the silent connection');
  return sock;
}

test('a silent connection made first owns nothing: the client that completes VERSION owns the device', () =>
  withSim({}, async (s) => {
    const quiet = await silent(s);
    try {
      assert.equal(s.owner().owner, null, 'connecting takes nothing');
      // Refused EBUSY (after ownerHandoverMs) while the silent connection owned the device.
      const owner = await VfioUserClient.connect(s.socketPath);
      const memfd = MemFd.create('sa1-owner-host', { size: 1 << 16 });
      try {
        assert.ok(s.owner().owner, 'the VERSION took the device');
        await owner.dmaMap({
          fd: memfd.fd,
          iova: 0x20_0000n,
          size: 1 << 16,
          flags: VFIO_USER_F_DMA_REGION_READ | VFIO_USER_F_DMA_REGION_WRITE,
        });
        const bus = clientBus(owner);
        await w32(bus, BAR0, ds.REG_SCRATCH, 0x1234);
        // The silent connection goes: the owner's device is not reset under it.
        quiet.close();
        await until(() => s.owner().connections === 1, 'the silent connection to be gone');
        assert.equal((await s.stats()).dmaMaps, 1, "the owner's DMA map is kept");
        assert.equal(await r32(bus, BAR0, ds.REG_SCRATCH), 0x1234);
        assert.ok(s.owner().owner, 'still the owner');
      } finally {
        owner.close();
        memfd.close();
      }
    } finally {
      quiet.close();
    }
  }));

test("of two VERSIONs waiting for the owner's disconnect, one gets the device and the other EBUSY", () =>
  withSim({ ownerHandoverMs: 60_000 }, async (s) => {
    const first = await VfioUserClient.connect(s.socketPath);
    const waiting = [0, 1].map(() =>
      VfioUserClient.connect(s.socketPath, { timeoutMs: 60_000 }).then(
        (c) => ({ ok: true as const, c }),
        (err: Error) => ({ ok: false as const, err }),
      ),
    );
    await until(() => s.owner().waiting === 2, 'both VERSIONs to wait for the owner');
    first.close();
    const outcomes = await Promise.all(waiting);
    for (const o of outcomes) if (o.ok) o.c.close();
    assert.equal(outcomes.filter((o) => o.ok).length, 1, 'exactly one new owner');
    const refused = outcomes.find((o) => !o.ok);
    assert.match(String(refused?.err), /EBUSY/);
  }));

test('a VERSION whose client hung up while it waited for the owner takes nothing: the live one waiting gets the device', () =>
  withSim({ ownerHandoverMs: 60_000 }, async (s) => {
    const first = await VfioUserClient.connect(s.socketPath);
    // A VERSION sent by hand, whose sender hangs up while it waits for the owner (a broker killed mid-start).
    const dead = connectVfioUser(s.socketPath);
    dead.on('error', () => {});
    dead.send(encodeCommand(0, P.VFIO_USER_VERSION, encodeVersion(0, 0, { capabilities: {} })));
    await until(() => s.owner().waiting === 1, 'the dead VERSION to wait for the owner');
    // The simulator (in this process) has seen the hang-up once its end of the socket is closed too.
    const fds = openFdCount();
    dead.close();
    await until(() => openFdCount() === fds - 2, "the simulator to see the dead connection's hang-up");
    const live = VfioUserClient.connect(s.socketPath, { timeoutMs: 60_000 });
    await until(() => s.owner().waiting === 2, 'the live VERSION to wait too');
    first.close();
    const owner = await within(live, 'the live VERSION to be answered', 30_000);
    try {
      assert.ok(s.owner().owner, 'the live client owns the device');
      assert.equal(s.owner().connections, 1, 'the dead connection is gone');
    } finally {
      owner.close();
    }
  }));

/** Resolves once the simulator has closed `sock` (its hang-up seen here). */
const hungUp = (sock: StreamSocket) => new Promise<void>((r) => sock.once('close', () => r()));

test('a connection that never completes VERSION is closed at its deadline; the owner is kept', () =>
  withSim({ ownerHandoverMs: 100, versionTimeoutMs: 500 }, async (s) => {
    const owner = await VfioUserClient.connect(s.socketPath);
    try {
      const quiet = await silent(s);
      try {
        await within(hungUp(quiet), 'the deadline to close the silent connection', 10_000);
        const bus = clientBus(owner);
        await w32(bus, BAR0, ds.REG_SCRATCH, 0x77);
        assert.equal(
          await r32(bus, BAR0, ds.REG_SCRATCH),
          0x77,
          'the owner, past its own deadline, is served',
        );
        assert.equal(s.owner().connections, 1);
      } finally {
        quiet.close();
      }
    } finally {
      owner.close();
    }
  }));

test('connections past the pending limit are closed at once: the simulator holds a bounded number of fds', async () => {
  const lines: string[] = [];
  const PER_UID = 4;
  const ATTACK = 40;
  await withSim({ maxPending: 6, maxPendingPerUid: PER_UID, log: (l) => lines.push(l) }, async (s) => {
    const before = openFdCount();
    const socks: StreamSocket[] = [];
    try {
      const ended: Promise<void>[] = [];
      for (let i = 0; i < ATTACK; i++) {
        const sock = connectVfioUser(s.socketPath);
        sock.on('error', () => {});
        socks.push(sock);
        ended.push(hungUp(sock));
      }
      let refused = 0;
      for (const e of ended) void e.then(() => refused++);
      await until(() => refused === ATTACK - PER_UID, 'every connection past the limit to be closed');
      assert.equal(s.owner().connections, PER_UID, 'the simulator serves maxPendingPerUid of them');
      // Both ends of each held connection (a refused one's socket closed itself at the hang-up).
      assert.equal(openFdCount() - before, 2 * PER_UID, "the simulator's fds are bounded");
      assert.ok(
        lines.some((l) => /refused a connection .*maxPendingPerUid = 4/.test(l)),
        lines.join('\n'),
      );
      // Their places are freed by their close: a client completes VERSION and owns the device.
      for (const sock of socks) sock.close();
      await until(() => s.owner().connections === 0, 'the held connections to be gone');
      const owner = await VfioUserClient.connect(s.socketPath);
      owner.close();
    } finally {
      for (const sock of socks) sock.close();
    }
  });
});
