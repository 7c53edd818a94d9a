// The demo — the main job — runs, verifies its data and exits 0; Ctrl-C leaves nothing behind.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { test } from 'node:test';
import { DEVLEASE_BIN } from '../src/util/processes.js';
import { until } from './helpers/broker-rig.js';
import { alive } from './helpers/proc-stat.js';
import { within } from './helpers/within.js';

function runDemo(args: string[]) {
  const child = spawn(process.execPath, [DEVLEASE_BIN, 'demo', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d;
  });
  child.stderr.on('data', (d: Buffer) => {
    out += d;
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, exited, out: () => out };
}

test('devlease demo --seconds 5 --no-tty: revokes one, kills one, re-leases, verifies every byte, exits 0', async () => {
  const d = runDemo(['--seconds', '5', '--no-tty', '--clients', '3']);
  // A 5 s demo: generous for start-up and shutdown under load, but a hung demo fails instead of hanging.
  const code = await within(d.exited, 'the 5 s demo to exit', 120_000);
  const out = d.out();
  assert.equal(code, 0, out);
  assert.match(out, /owner: revoke queue-\d+ .* with a \d+ ms deadline/);
  assert.match(out, /got the revocation notice/);
  assert.match(out, /owner: SIGKILL client #\d+/);
  assert.match(out, /broker: lease queue-\d+ reclaimed in [\d.]+ ms \(slices revoked\)/);
  assert.match(out, /started \(re-lease after queue-\d+ was reclaimed\)/);
  assert.match(
    out,
    /summary: \d+ clients, [\d.]+ MB verified, 0 mismatches, 0 client errors, one lease revoked, one client killed → PASS/,
  );
});

test('Ctrl-C stops everything: no process, socket or temporary directory left behind', async () => {
  const d = runDemo(['--seconds', '60', '--no-tty', '--clients', '2']);
  // Simulator, broker and two client processes start first: 20 s was not enough at load ~14 on 2 cores.
  await until('two clients to lease', () => (d.out().match(/ leased queue-/g) ?? []).length >= 2, 60_000);
  const dir = /run directory (\S+)/.exec(d.out())?.[1];
  const pids = [...d.out().matchAll(/pid (\d+)/g)].map((m) => Number(m[1]));
  assert.ok(dir && existsSync(dir), 'the demo made its run directory');
  assert.ok(pids.length >= 4, `saw the simulator, broker and client pids in: ${d.out()}`);
  d.child.kill('SIGINT');
  assert.equal(await within(d.exited, 'the demo to exit after SIGINT', 30_000), 130);
  assert.equal(existsSync(dir), false, 'the run directory (and its sockets) is gone');
  await until('every child to be gone', () => pids.every((p) => !alive(p)), 5000);
});
