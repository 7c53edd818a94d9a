// Behaviour check (not a speed check): when accept() fails with EMFILE the
// listener stays readable (the backlog is not empty), so retrying at once
// spins at 100 % CPU and writes an error per spin. The server pauses
// accepting ACCEPT_BACKOFF_MS after a failure: one error per back-off. The
// fixture (a real EMFILE, under ulimit -n) watches its own back-off timers
// and counts accept calls and listener wake-ups while one is pending; no
// clock or CPU time is measured.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ACCEPT_BACKOFF_MS } from '../../src/sys/unix-server.js';
import { until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import type { WatchedTimer } from '../helpers/timers.js';

after(trackFdLeaks());

const FIXTURE = fileURLToPath(new URL('../fixtures/sys/accept-emfile.js', import.meta.url));
const FD_LIMIT = 96;
const CONNECTIONS = 160;
/** Back-offs to sit through: enough to see each failure arm one timer and accepting resume after each. */
const ROUNDS = 3;

interface Report {
  accepts: number;
  acceptsDuringBackoff: number;
  wakeupsDuringBackoff: number;
  errors: number;
  timers: WatchedTimer[];
}

test(`accept failing with EMFILE (ulimit -n ${FD_LIMIT}) reports once per back-off, without spinning`, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-emfile-'));
  const path = join(dir, 'emfile.sock');
  const child = spawn(
    'bash',
    ['-c', `ulimit -n ${FD_LIMIT} && exec "$@"`, 'bash', process.execPath, FIXTURE, path],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const exited = once(child, 'exit');
  const clients: Socket[] = [];
  let out = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    out += chunk;
  });
  const lines = () => out.split('\n');
  const errors = () => lines().filter((l) => l.startsWith('error '));
  try {
    await until('the fixture to listen', () => {
      if (child.exitCode !== null) throw new Error(`fixture exited early (${child.exitCode})`);
      return out.includes('ready');
    });
    // More connections than the child has descriptors: the rest wait in its backlog.
    for (let i = 0; i < CONNECTIONS; i++) {
      const s = connect(path);
      s.on('error', () => {});
      clients.push(s);
    }
    await until(`${ROUNDS} accept errors`, () => errors().length >= ROUNDS, 10_000);
    child.stdin.write('report\n');
    await until('the report', () => out.includes('report '));
    const report = JSON.parse(
      lines()
        .find((l) => l.startsWith('report '))!
        .slice(7),
    ) as Report;
    // The errors printed before the report, in order, each with the back-off timers armed by then.
    const reported = errors().slice(0, report.errors);
    assert.ok(
      reported.every((l) => / EMFILE /.test(l)),
      `accept ran out of descriptors: ${reported.join('; ')}`,
    );
    assert.deepEqual(
      reported.map((l) => Number(l.split(' ').at(-1))),
      reported.map((_, i) => i + 1),
      'each failure armed exactly one back-off timer before it was reported',
    );
    assert.equal(report.timers.length, report.errors, 'no back-off timer without a failure');
    assert.ok(
      report.timers.every((t) => t.delay === ACCEPT_BACKOFF_MS),
      `every back-off is ACCEPT_BACKOFF_MS: ${JSON.stringify(report.timers)}`,
    );
    assert.deepEqual(
      report.timers.slice(0, -1).map((t) => t.state),
      report.timers.slice(0, -1).map(() => 'fired'),
      'each back-off but the last ran out (accepting resumed after it)',
    );
    assert.equal(report.acceptsDuringBackoff, 0, 'accept is not retried before the back-off ends');
    assert.equal(report.wakeupsDuringBackoff, 0, 'the listener is not watched during the back-off');
  } finally {
    for (const s of clients) s.destroy();
    child.stdin.end();
    await exited;
    rmSync(dir, { recursive: true, force: true });
  }
});
