// `devlease demo` ended from outside, other than by Ctrl-C (test/demo.test.ts): its terminal closed (SIGHUP),
// or its reader gone (`devlease demo | head`: EPIPE on stdout). Either once killed the demo outright, the
// second with a stack trace, and left its simulator running (spinning) and its run directory behind. And
// --json: stdout is the summary alone, parseable as JSON.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { test } from 'node:test';
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
