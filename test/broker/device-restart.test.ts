// The device's server dies and comes back: the broker stays up. Every lease
// is reclaimed with an ERR notice, new leases are refused (ENODEV, naming the
// socket and that the broker is reconnecting), and once the server listens
// again the broker reconnects, boots the device and leases again.
import assert from 'node:assert/strict';
import { type ChildProcess, fork } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Broker } from '../../src/broker/broker.js';
import { configFromObject } from '../../src/broker/config.js';
import type { DeviceConnectionStatus } from '../../src/broker/device-link.js';
import { adminRequest } from '../../src/cli/admin.js';
import { connect } from '../../src/client/lease.js';
import { VfioUserDevice } from '../../src/device/vfio-user-device.js';
import { BAR0, REG } from '../../src/hw/sa1/regs.js';
import { spawnSimulator } from '../../src/sim/host/child.js';
import { startBroker, startSim } from '../../src/util/processes.js';
import { ClientProc, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { preparedFds } from '../helpers/prepared-fds.js';
import { watchTimers } from '../helpers/timers.js';

const leakCheck = trackFdLeaks();
after(leakCheck);
const here = dirname(fileURLToPath(import.meta.url));
const FAST = { device: { reconnect_initial_ms: 20, reconnect_max_ms: 200 } };

/** `p`, or a failure naming `what` after `ms`: no wait in this file is open-ended. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/**
 * Whether `p` settles before this process next goes back to its event loop: it waited on no I/O and no timer
 * (a reply, a deadline, a reconnect attempt). Not a wall-clock bound: those flake under load.
 */
function settlesAtOnce(p: Promise<unknown>): Promise<boolean> {
  const settled = p.then(
    () => true,
    () => true,
  );
  return Promise.race([settled, new Promise<boolean>((resolve) => setImmediate(() => resolve(false)))]);
}

function forkMemoryServer(sock: string): Promise<ChildProcess> {
  const server = fork(join(here, '..', 'fixtures', 'vfio-user', 'server-child.js'), [sock], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const ready = new Promise<ChildProcess>((resolve, reject) => {
    server.once('message', () => resolve(server));
    server.once('exit', (c) => reject(new Error(`server child exited early (${c})`)));
  });
  return within(ready, 10_000, 'the vfio-user server child').catch((err) => {
    server.kill('SIGKILL');
    throw err;
  });
}

test('the simulator is killed and restarted: leases reclaimed with a notice, refused while gone, granted after', async () => {
  const rig = await startRig({ sim: { numQueues: 4 }, config: FAST });
  let sim2: Awaited<ReturnType<typeof spawnSimulator>> | null = null;
  const [a, b] = await Promise.all([ClientProc.spawn(), ClientProc.spawn()]);
  try {
    await a.call('connect', { socket: rig.socket });
    await a.call('queue');
    assert.equal((await a.call('submit', { desc: { opcode: 'NOP' } })).status, 'OK');

    const gone = new Promise<string>((resolve) => rig.broker.once('device-gone', resolve));
    rig.sim.process.kill('SIGKILL');
    await rig.sim.exited;
    assert.match(await within(gone, 5000, 'device-gone'), /closed the connection/);
    await until('the lease to be reclaimed', () => rig.broker.leases.all().length === 0);
    await until("A's notice and disconnect", async () => {
      const ev: string[] = await a.call('events');
      return ev.includes('device-reset') && ev.includes('disconnected');
    });
    const released = rig.audit.find((e) => e.event === 'released');
    assert.equal(released?.deviceLost, true, 'the lease ended without asking the lost device');

    // No device call waits on a device that is not there (for its deadline, or the next reconnect attempt).
    const call = rig.device.read32(BAR0, REG.ID);
    assert.ok(await settlesAtOnce(call), 'a device call while gone waited on something before it failed');
    await assert.rejects(call, { code: 'ECONNRESET' });

    // `devlease status` shows it: gone, since when, and why.
    const status = (await rig.broker.status()) as { deviceConnection: DeviceConnectionStatus };
    assert.equal(status.deviceConnection.state, 'gone');
    assert.ok(Date.parse(status.deviceConnection.since) <= Date.now());
    assert.match(String(status.deviceConnection.lastError), /closed the connection|connect/);

    const refused = await b.call('connect', { socket: rig.socket }).catch((e) => e);
    assert.equal(refused.code, 'ENODEV');
    assert.ok(refused.message.includes(rig.simSocket), `the reason names the socket: ${refused.message}`);
    assert.match(refused.message, /reconnecting/);

    const back = new Promise<void>((resolve) => rig.broker.once('device-back', resolve));
    sim2 = await spawnSimulator({ socketPath: rig.simSocket, numQueues: 4 });
    await within(back, 3000, 'device-back after the restart');
    assert.equal(rig.broker.deviceConnection().state, 'up');
    assert.ok(rig.audit.some((e) => e.event === 'device-back'));

    // A new lease works end to end: a COPY through Sa1Queue, checked byte for byte.
    await b.call('connect', { socket: rig.socket });
    await b.call('queue');
    const src = (await b.call('alloc', { name: 'src', size: 4096 })).iova;
    const dst = (await b.call('alloc', { name: 'dst', size: 4096 })).iova;
    await b.call('fill', { name: 'src', value: 0xa5, length: 256 });
    const r = await b.call('submit', { desc: { opcode: 'COPY', src, dst, length: 256 } });
    assert.equal(r.status, 'OK');
    assert.deepEqual(await b.call('readBuf', { name: 'dst', length: 256 }), Array(256).fill(0xa5));
  } finally {
    await Promise.all([a.exit(), b.exit()]);
    await rig.close();
    await sim2?.close();
  }
});

test('broker shutdown while the device is gone is prompt and leaves nothing open', async () => {
  // Long waits between attempts: shutdown must not sit out the one in progress. Its timer shows it: cut short
  // (cleared), not sat out (fired).
  const config = { device: { reconnect_initial_ms: 500, reconnect_max_ms: 5000 } };
  const rig = await startRig({ sim: { numQueues: 2 }, config });
  const timers = watchTimers('/broker/device-link.js');
  try {
    const gone = new Promise((resolve) => rig.broker.once('device-gone', resolve));
    rig.sim.process.kill('SIGKILL');
    await within(gone, 5000, 'device-gone');
    await until('a failed attempt, and the wait for the next (1 s)', () => {
      const c = rig.broker.deviceConnection();
      return c.attempts >= 1 && c.nextAttemptAt !== null;
    });
    const waiting = timers.timers().filter((t) => t.state === 'pending');
    assert.equal(waiting.length, 1, 'the wait before the next attempt is a timer of the device link');
    await rig.broker.close();
    assert.deepEqual(
      waiting.map((t) => t.state),
      ['cleared'],
      'close cut the wait before the next attempt short (its timer cleared, not fired)',
    );
    assert.equal(timers.live(), 0, 'close left a reconnect wait armed');
  } finally {
    timers.stop();
    await rig.close(); // the file's fd check (after) sees anything the broker left open
  }
});

test('with device.reconnect = false the broker gives the device up, saying why (the daemon then exits)', async () => {
  const rig = await startRig({ sim: { numQueues: 2 }, config: { device: { reconnect: false } } });
  try {
    const lost = new Promise<string>((resolve) => rig.broker.once('device-lost', resolve));
    rig.sim.process.kill('SIGKILL');
    // A call may be in flight when the simulator dies (a loaded machine): the reason then counts it.
    assert.match(
      await within(lost, 5000, 'device-lost'),
      /closed the connection( with \d+ call\(s\) pending)?; device\.reconnect is off/,
    );
    assert.equal(rig.broker.deviceConnection().state, 'gone');
  } finally {
    await rig.close();
  }
});

test('another device answering on the socket is not taken; the right one coming back is', async () => {
  const rig = await startRig({ sim: { numQueues: 2 }, config: FAST });
  let stranger: ChildProcess | null = null;
  let sim2: Awaited<ReturnType<typeof spawnSimulator>> | null = null;
  try {
    const gone = new Promise((resolve) => rig.broker.once('device-gone', resolve));
    rig.sim.process.kill('SIGKILL');
    await within(gone, 5000, 'device-gone');
    stranger = await forkMemoryServer(rig.simSocket);
    await until('the stranger to be looked at and refused', () =>
      /now serves PCI .* not the PCI .* first opened/.test(rig.broker.deviceConnection().lastError ?? ''),
    );
    assert.equal(rig.broker.deviceConnection().state, 'gone');
    const exited = new Promise((r) => stranger!.once('exit', r));
    stranger.kill('SIGKILL');
    await within(exited, 5000, 'the stranger to exit');
    const back = new Promise((resolve) => rig.broker.once('device-back', resolve));
    sim2 = await spawnSimulator({ socketPath: rig.simSocket, numQueues: 2 });
    await within(back, 3000, 'device-back');
  } finally {
    stranger?.kill('SIGKILL');
    await rig.close();
    await sim2?.close();
  }
});

test('a lease parked on a client that keeps its mapping ends with the device too; its queue is leased again', async () => {
  // Without revocation, reclaim waits for the client's release; the device going away ends that wait.
  const rig = await startRig({ sim: { numQueues: 1 }, config: { ...FAST, lifetime: { revoke: false } } });
  let sim2: Awaited<ReturnType<typeof spawnSimulator>> | null = null;
  const [a, b] = await Promise.all([ClientProc.spawn(), ClientProc.spawn()]);
  try {
    await a.call('connect', { socket: rig.socket });
    await a.call('dropSessionKeepMapping');
    await until(
      'the lease to await its release',
      () => rig.broker.leases.all()[0]?.state === 'awaiting-release',
    );
    rig.sim.process.kill('SIGKILL');
    await until('the parked lease to end', () => rig.broker.leases.all().length === 0);
    const released = rig.audit.find((e) => e.event === 'released');
    assert.equal(released?.deviceLost, true);
    assert.equal(released?.outstandingSliceFds, 1, "the client still maps the dead device's page");
    const back = new Promise((resolve) => rig.broker.once('device-back', resolve));
    sim2 = await spawnSimulator({ socketPath: rig.simSocket, numQueues: 1 });
    await within(back, 3000, 'device-back');
    // The one queue is free in the new pools, and the old lease's late release cannot free it twice.
    const info = (await b.call('connect', { socket: rig.socket })).info;
    assert.equal(info.queue, 0);
    await a.call('unmapKept');
    await b.call('queue');
    assert.equal((await b.call('submit', { desc: { opcode: 'NOP' } })).status, 'OK');
  } finally {
    await Promise.all([a.exit(), b.exit()]);
    await rig.close();
    await sim2?.close();
  }
});

test('the generic driver survives its vfio-user server restarting too', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-generic-restart-'));
  const sock = join(dir, 'mem.sock');
  let server = await forkMemoryServer(sock);
  const device = await VfioUserDevice.connect(sock);
  const broker = await Broker.start({
    config: configFromObject({ rundir: join(dir, 'run'), ...FAST }),
    device,
    log: () => {},
  });
  try {
    assert.equal(broker.driver.name, 'generic');
    const socket = broker.sockets.get('device')!;
    const first = await connect({ socket });
    const ended = new Promise<string[]>((resolve) => {
      const seen: string[] = [];
      first.on('device-reset', () => seen.push('device-reset'));
      first.on('disconnected', () => resolve([...seen, 'disconnected']));
    });
    server.kill('SIGKILL');
    assert.deepEqual(await within(ended, 5000, 'the lease to end'), ['device-reset', 'disconnected']);
    const refused = await connect({ socket }).catch((e) => e);
    assert.equal(refused.code, 'ENODEV');
    assert.ok(refused.message.includes(sock));
    server = await forkMemoryServer(sock);
    await until('a lease after the restart', async () => {
      const l = await connect({ socket }).catch(() => null);
      if (!l) return false;
      try {
        // The whole-device lease works again (it was released with the lost device, not kept "leased").
        assert.equal((await l.client.regionRead(0, 0, 4)).byteLength, 4);
        assert.ok(l.region(2).length > 0);
      } finally {
        l.close();
      }
      return true;
    });
  } finally {
    await broker.close();
    await device.close();
    if (server.exitCode === null && server.signalCode === null) {
      const exited = new Promise((r) => server.once('exit', r));
      server.send('stop');
      await within(exited, 5000, 'the server child to stop').catch(() => server.kill('SIGKILL'));
    }
    rmSync(dir, { recursive: true, force: true });
  }
});

const fdCount = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

test('the daemon stays up across kill/restart cycles of the simulator, and its fd count returns to baseline', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-cycles-'));
  const simSock = join(dir, 'sim.sock');
  const cfg = join(dir, 'broker.toml');
  writeFileSync(cfg, '[device]\nreconnect_initial_ms = 20\nreconnect_max_ms = 200\n');
  let sim = await startSim(simSock, ['--queues', '4']);
  const events: Record<string, unknown>[] = [];
  const broker = await startBroker(
    `vfio-user:${simSock}`,
    ['--rundir', join(dir, 'run'), '--config', cfg],
    (e) => events.push(e),
  );
  const socket = broker.sockets.queue!;
  const count = (event: string) => events.filter((e) => e.event === event).length;
  const useOnce = async () => {
    const lease = await connect({ socket });
    const buf = await lease.dma.alloc(4096);
    buf.u8[0] = 1;
    return lease;
  };
  try {
    (await useOnce()).close(); // warm up lazily made handles (inotify, pools)
    // The broker's fds once every lease is reclaimed, less the slice fds it holds prepared (they come and go
    // with reclaims and reconnects; helpers/prepared-fds.ts bounds them). Waited for, not slept on: under load
    // the warm-up lease's reclaim can take longer than any fixed pause.
    const admin = join(broker.dir, 'admin.sock');
    const settledFds = async (): Promise<number | null> => {
      const leases = (await adminRequest(admin, { op: 'leases' })) as unknown[];
      return leases.length === 0 ? fdCount(broker.pid) - (await preparedFds(admin)) : null;
    };
    const settle = async (
      what: string,
      want: (fds: number) => boolean,
      ms: number,
    ): Promise<number | null> => {
      // Two looks that agree: the prepared count includes an fd still on its way from the device, which the
      // process's own count shows only once it has arrived.
      let fds: number | null = null;
      let previous: number | null = null;
      await until(
        what,
        async () => {
          previous = fds;
          fds = await settledFds();
          return fds !== null && fds === previous && want(fds);
        },
        ms,
      ).catch(() => undefined);
      return fds;
    };
    const baseline = await settle('the warm-up lease reclaimed', () => true, 5000);
    assert.notEqual(baseline, null, 'the warm-up lease was not reclaimed within 5 s');
    for (let cycle = 0; cycle < 3; cycle++) {
      const held = await useOnce();
      const disconnected = new Promise((r) => held.once('disconnected', r));
      await sim.stop('SIGKILL');
      await within(disconnected, 5000, `cycle ${cycle}: the lease to end`);
      const refused = await connect({ socket }).catch((e) => e);
      assert.equal(refused.code, 'ENODEV', `cycle ${cycle}: ${refused.message}`);
      if (cycle === 0) {
        // `devlease status` answers while the device is away, and says so.
        const st = (await adminRequest(join(broker.dir, 'admin.sock'), { op: 'status' })) as {
          deviceConnection: DeviceConnectionStatus;
        };
        assert.equal(st.deviceConnection.state, 'gone');
        assert.match(String(st.deviceConnection.lastError), /closed the connection|connect/);
      }
      sim = await startSim(simSock, ['--queues', '4']);
      await until(`cycle ${cycle}: the device back`, () => count('device-back') === cycle + 1, 5000);
      (await useOnce()).close();
    }
    assert.equal(broker.proc.exitCode, null, 'the daemon is still running');
    const fdsAfter = await settle(`the broker's fds back to ${baseline}`, (fds) => fds === baseline, 3000);
    assert.equal(
      fdsAfter,
      baseline,
      'broker fd count after the cycles (no lease left; prepared slice fds left out)',
    );
    // And it stops cleanly while its device is away.
    await sim.stop('SIGKILL');
    await until('the broker to see the device gone', () => count('device-gone') === 4, 5000);
    assert.equal(await broker.stop('SIGTERM'), 0);
  } finally {
    await broker.stop('SIGKILL');
    await sim.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
