// Behaviour check (not a speed check): when accept() fails with EMFILE the
// listener stays readable (the backlog is not empty), so retrying at once
// spins at 100 % CPU and writes an error per spin. The server pauses
// accepting ACCEPT_BACKOFF_MS after a failure: one error per back-off.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ACCEPT_BACKOFF_MS } from '../../src/sys/unix-server.js';
import { cpuDuring } from '../helpers/proc-stat.js';

const FIXTURE = fileURLToPath(new URL('../fixtures/sys/accept-emfile.js', import.meta.url));
const FD_LIMIT = 96;
const CONNECTIONS = 160;

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
  const errors = () => out.split('\n').filter((l) => l.startsWith('error ')).length;
  try {
    await new Promise<void>((resolve, reject) => {
      const check = setInterval(() => out.includes('ready') && (clearInterval(check), resolve()), 5);
      child.once('exit', (code) => {
        clearInterval(check);
        reject(new Error(`fixture exited early (${code})`));
      });
    });
    // More connections than the child has descriptors: the rest wait in its backlog.
    for (let i = 0; i < CONNECTIONS; i++) {
      const s = connect(path);
      s.on('error', () => {});
      clients.push(s);
    }
    const deadline = Date.now() + 5000;
    while (errors() === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.match(out, /error EMFILE/, 'accept ran out of descriptors');
    const before = errors();
    const windowMs = 2000;
    const cpu = await cpuDuring(child.pid!, windowMs);
    const reported = errors() - before;
    const most = windowMs / ACCEPT_BACKOFF_MS + 3;
    assert.ok(
      reported <= most,
      `${reported} accept errors in ${windowMs} ms (at most ${most}: one per back-off)`,
    );
    assert.ok(reported >= 1, 'accepting is retried after the back-off');
    // Generous: a spinning child uses ~2 s of CPU in 2 s.
    assert.ok(cpu < 0.5, `the server used ${cpu.toFixed(2)} s of CPU in ${windowMs / 1000} s`);
  } finally {
    for (const s of clients) s.destroy();
    child.stdin.end();
    await exited;
    rmSync(dir, { recursive: true, force: true });
  }
});
