// `devlease top` on a terminal while the device does not answer: each snapshot then takes the device sample's
// deadline (2 s), far longer than a short --interval, and top asked again at every tick, so the broker had
// snapshots piling up, each leaving its device reads outstanding. Top skips a tick while its last snapshot is
// still being fetched. A real pseudo-terminal (python3's pty module: top sees a TTY on stdin and stdout) runs
// top against this process's broker, whose snapshots are counted as the broker serves them; the SA-1 simulator
// child stopped with SIGSTOP is the device that does not answer.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { TopSnapshot } from '../../src/broker/observe/top-snapshot.js';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { stopChild } from '../helpers/stop-child.js';
import { within } from '../helpers/within.js';

after(trackFdLeaks());

/**
 * Runs argv on a new pseudo-terminal of 160x40 (a new one is 0x0, on which top draws nothing); what the
 * terminal shows comes out on stdout, and stdin goes to it.
 */
const PTY = `import pty, sys; sys.exit(pty.spawn(['sh', '-c', 'stty cols 160 rows 40 && exec "$0" "$@"'] + sys.argv[1:]) >> 8)`;

test('devlease top on a terminal, the device stopped: one snapshot asked at a time, ticks skipped meanwhile', async () => {
  const rig = await startRig({
    deviceTimeoutMs: 120_000, // the broker must not give up on the device while this test runs
    config: { sa1: { heartbeat_ms: 60_000, response_timeout_ms: 600_000 } },
  });
  // Every "top" request the broker serves, counted as it serves it: how many at once, and how many in all.
  const snapshot = TopSnapshot.prototype.snapshot;
  const served = { started: 0, finished: 0, inFlight: 0, maxInFlight: 0 };
  TopSnapshot.prototype.snapshot = async function (this: TopSnapshot) {
    served.started++;
    served.maxInFlight = Math.max(served.maxInFlight, ++served.inFlight);
    try {
      return await snapshot.call(this);
    } finally {
      served.inFlight--;
      served.finished++;
    }
  };
  const admin = join(rig.broker.dir, 'admin.sock');
  const top = spawn(
    'python3',
    ['-c', PTY, process.execPath, DEVLEASE_BIN, 'top', '--admin', admin, '--interval', '100'],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  let screen = '';
  top.stdout!.setEncoding('utf8');
  top.stdout!.on('data', (d: string) => {
    screen += d;
  });
  const exited = new Promise<number | null>((r) => top.once('exit', (code) => r(code)));
  let stopped = false;
  try {
    await until('top to draw its screen', () => screen.includes('devlease top — device sa1'), 30_000);
    assert.match(screen, /\x1b\[\?1049h/, 'on the alternate screen: top saw a terminal');
    // Snapshots answered at once while the device answers: the ticks (100 ms) go through.
    await until('top to refresh', () => served.finished >= 3, 30_000);
    assert.equal(served.maxInFlight, 1, 'one at a time while the device answers');

    rig.sim.process.kill('SIGSTOP'); // its ChildProcess: never a pid another process may have by now
    stopped = true;
    const from = { ...served };
    // Each snapshot now takes the 2 s sample deadline: some 20 of top's ticks fall within each one.
    await until(
      'three snapshots with the device stopped',
      () => served.finished >= from.finished + 3,
      60_000,
    );
    assert.equal(
      served.maxInFlight,
      1,
      `top asked for one snapshot at a time (the broker had ${served.maxInFlight} at once)`,
    );
    assert.ok(
      served.started - from.started <= 4,
      `ticks skipped while a snapshot was out: ${served.started - from.started} asked for 3 answered`,
    );
    rig.sim.process.kill('SIGCONT');
    stopped = false;

    top.stdin!.write('q');
    assert.equal(await within(exited, 'top to quit at q', 30_000), 0);
    assert.match(screen, /\x1b\[\?1049l/, 'the alternate screen left at the end');
  } finally {
    TopSnapshot.prototype.snapshot = snapshot;
    if (stopped) rig.sim.process.kill('SIGCONT');
    await stopChild(top);
    await rig.close();
  }
});
