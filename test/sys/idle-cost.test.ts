// Behaviour check (not a speed check): sockets that are watched but idle
// cost no CPU -- readiness comes from epoll, nothing polls.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const FIXTURE = fileURLToPath(new URL('../fixtures/sys/idle-sockets.js', import.meta.url));
/** /proc reports CPU time in USER_HZ ticks, which Linux fixes at 100 per second. */
const TICKS_PER_SECOND = 100;

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

test('a process with 100 watched idle sockets uses under 1% CPU over 5 s', async () => {
  const child = spawn(process.execPath, [FIXTURE, '100'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = once(child, 'exit');
  try {
    let out = '';
    child.stdout.setEncoding('utf8');
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (chunk: string) => {
        out += chunk;
        if (out.includes('ready')) resolve();
      });
      child.once('exit', (code, signal) =>
        reject(new Error(`idle fixture exited early (${code ?? signal})`)),
      );
    });
    const before = cpuTicks(child.pid!);
    await new Promise((resolve) => setTimeout(resolve, 5000));
    const used = cpuTicks(child.pid!) - before;
    const seconds = used / TICKS_PER_SECOND;
    assert.ok(seconds < 0.05, `idle child used ${seconds.toFixed(2)} s of CPU in 5 s (limit 0.05 s = 1%)`);
  } finally {
    child.stdin.end();
    const [code, signal] = await exited;
    assert.equal(code, 0, `idle fixture exit: ${code ?? signal}`);
  }
});
