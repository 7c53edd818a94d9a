// The device outlives the broker; the broker's fds do not grow with use.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { connect } from '../../src/client/lease.js';
import { DEVLEASE_BIN, startBroker, startSim } from '../../src/util/processes.js';
import { ClientProc } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);
const fdCount = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;
/**
 * The slice fds the broker holds prepared for the next grants (lifetime.prepared_slice_fds, issue 16), as its
 * status says: how many depends on how far each release had got when the next lease came.
 */
async function preparedFds(admin: string): Promise<number> {
  const r = await promisify(execFile)(process.execPath, [DEVLEASE_BIN, 'status', '--json', '--admin', admin]);
  return JSON.parse(r.stdout).driver.preparedSliceFds as number;
}

test('after the broker is killed the simulator keeps running, and a restarted broker serves new leases', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-restart-'));
  const simSock = join(dir, 'sim.sock');
  const sim = await startSim(simSock, ['--queues', '4']);
  try {
    const args = ['--rundir', join(dir, 'run')];
    const b1 = await startBroker(`vfio-user:${simSock}`, args, () => {});
    const c = await ClientProc.spawn();
    await c.call('connect', { socket: b1.sockets.queue });
    await c.call('queue');
    await b1.stop('SIGKILL');
    assert.equal(sim.proc.exitCode, null, 'the simulator is still running');
    await c.exit();
    const b2 = await startBroker(`vfio-user:${simSock}`, args, () => {});
    const d = await ClientProc.spawn();
    await d.call('connect', { socket: b2.sockets.queue });
    await d.call('queue');
    const ok = await d.call('submit', { desc: { opcode: 'NOP' } });
    assert.equal(ok.status, 'OK');
    await d.exit();
    assert.equal(await b2.stop('SIGTERM'), 0);
  } finally {
    await sim.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the broker's open fd count returns to its baseline after 100 lease/release cycles", async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-fds-'));
  const simSock = join(dir, 'sim.sock');
  const sim = await startSim(simSock, ['--queues', '4']);
  try {
    const broker = await startBroker(`vfio-user:${simSock}`, ['--rundir', join(dir, 'run')], () => {});
    const socket = broker.sockets.queue!;
    const once = async () => {
      const lease = await connect({ socket });
      const buf = await lease.dma.alloc(4096);
      buf.u8[0] = 1;
      lease.close();
    };
    const admin = join(broker.dir, 'admin.sock');
    // Every fd but the prepared slice fds, which are counted (and checked against the queues) on their own.
    const others = async () => {
      const prepared = await preparedFds(admin);
      return { prepared, fds: fdCount(broker.pid) - prepared };
    };
    await once(); // warm up lazily created handles (inotify, pools)
    await new Promise((r) => setTimeout(r, 100));
    const baseline = (await others()).fds;
    for (let i = 0; i < 100; i++) await once();
    const settled = Date.now() + 3000;
    let now = await others();
    while (now.fds !== baseline && Date.now() < settled) {
      await new Promise((r) => setTimeout(r, 20));
      now = await others();
    }
    assert.equal(now.fds, baseline, `broker fds but the prepared ones: baseline ${baseline}, now ${now.fds}`);
    assert.ok(
      now.prepared >= 1 && now.prepared <= 4,
      `prepared slice fds: ${now.prepared}, one per free queue at most`,
    );
    assert.equal(await broker.stop('SIGTERM'), 0);
  } finally {
    await sim.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
