// `devlease demo` ended from outside, other than by Ctrl-C (test/demo.test.ts): its terminal closed (SIGHUP),
// or its reader gone (`devlease demo | head`: EPIPE on stdout). Either once killed the demo outright, the
// second with a stack trace, and left its simulator running (spinning) and its run directory behind. And
// --json: stdout is the summary alone, parseable as JSON.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { PidFd } from '../../src/sys/pidfd.js';
import { until } from '../helpers/broker-rig.js';
import { alive } from '../helpers/proc-stat.js';
import { within } from '../helpers/within.js';
import { spawnCli } from './run-cli.js';

/** A demo started, with what it printed so far; resolves once its simulator's pid and run directory showed. */
async function startDemo(args: string[]) {
  const { child, closed: exited, out, err } = spawnCli(['demo', ...args]);
  const seen = () => `${out()}${err()}`;
  await until('the simulator to start', () => /SA-1 simulator pid \d+/.test(seen()), 60_000);
  const simPid = Number(/SA-1 simulator pid (\d+)/.exec(seen())![1]);
  const dir = /run directory (\S+)/.exec(seen())![1]!;
  return { child, exited, simPid, dir, out, err };
}

async function assertCleanedUp(d: Awaited<ReturnType<typeof startDemo>>, code: number) {
  assert.equal(await within(d.exited, 'the demo to exit', 60_000), code, d.err());
  assert.doesNotMatch(d.err(), /^\s+at .+:\d+:\d+\)?$/m, 'no stack trace');
  assert.equal(existsSync(d.dir), false, 'the run directory (and its sockets) is gone');
  await until('the simulator to be gone', () => !alive(d.simPid), 10_000);
}

test('SIGHUP (the terminal closed) stops the demo as Ctrl-C does: exit 129, nothing left running or behind', async () => {
  const d = await startDemo(['--seconds', '60', '--no-tty', '--clients', '1']);
  d.child.kill('SIGHUP');
  await assertCleanedUp(d, 129);
});

test('its stdout reader gone (EPIPE) stops it likewise: exit 141, no uncaught error', async () => {
  const d = await startDemo(['--seconds', '60', '--no-tty', '--clients', '1']);
  d.child.stdout.destroy(); // the reader of `devlease demo | head -2` once head has its lines
  await assertCleanedUp(d, 141);
});

test('--json: stdout is the summary alone (the progress lines go to stderr)', async () => {
  const d = await startDemo(['--seconds', '2', '--json', '--clients', '1']);
  assert.equal(await within(d.exited, 'the demo to exit', 120_000), 0, d.err());
  const summary = JSON.parse(d.out()) as { ok: boolean };
  assert.equal(summary.ok, true);
  assert.match(d.err(), /run directory/);
});

/** The pids `pid`'s threads started (its child processes), from /proc/PID/task/TID/children. */
function childrenOf(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).flatMap((tid) =>
    readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8')
      .split(' ')
      .filter((s) => s !== '')
      .map(Number),
  );
}

test('SIGKILLed, it gives no chance to stop anything: its simulator, broker and clients end with it all the same', async (t) => {
  // Four clients (the default): with more of them letting go at the demo's death, the broker's first log line
  // after it came sooner, and failing EPIPE on the dead demo's pipe, it ended before unlinking its sockets.
  const d = await startDemo(['--seconds', '60', '--no-tty', '--clients', '4']);
  await until(
    'all four clients to hold a lease',
    () => (d.out().match(/ leased /g) ?? []).length >= 4,
    60_000,
  );
  const brokerPid = Number(/broker pid (\d+)/.exec(d.out())![1]);
  const kids = childrenOf(d.child.pid!);
  assert.ok(kids.includes(d.simPid) && kids.includes(brokerPid) && kids.length >= 6, `children: ${kids}`);
  // pidfds, taken while they are the demo's (not yet reaped, so these pids are theirs): what is watched below
  // is these processes, and a cleanup signal cannot reach another process that got a reused pid.
  const fds = kids.map((pid) => PidFd.open(pid));
  t.after(() => {
    for (const f of fds) {
      if (f.isAlive()) f.sendSignal('SIGKILL');
      f.close();
    }
    rmSync(d.dir, { recursive: true, force: true });
  });
  d.child.kill('SIGKILL');
  assert.equal(await within(d.exited, 'the demo to die', 10_000), null);
  await within(
    Promise.all(fds.map((f) => new Promise<void>((r) => f.onExit(r)))),
    `the demo's children ${kids} to end after it`,
    30_000,
  );
  // The run directory is the demo's to remove, and it could not; what the simulator and the broker served
  // there they unlinked as they stopped (docs/OPERATIONS.md, "devlease demo").
  assert.equal(existsSync(join(d.dir, 'sa1.sock')), false, "the simulator's socket is gone");
  assert.deepEqual(readdirSync(join(d.dir, 'run', 'sa1')), [], "the broker's sockets are gone");
});
