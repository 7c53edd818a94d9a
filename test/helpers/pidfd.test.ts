// The tests' pidfd helpers (helpers/pidfd.ts) across a real pid reuse: a signal meant for a process that is gone
// must not reach the process given its pid since (as root, through ns_last_pid, as audit-scan-pid-reuse does).
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants, existsSync, writeFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { until } from './broker-rig.js';
import { trackFdLeaks } from './fds.js';
import { confirmedPidfd, pidfdOf, signal } from './pidfd.js';

const NS_LAST_PID = '/proc/sys/kernel/ns_last_pid';
const children: ChildProcess[] = [];
const leakCheck = trackFdLeaks();
after(() => {
  for (const c of children) c.kill('SIGKILL');
  return leakCheck();
});

function sleeper(): { proc: ChildProcess; exited: Promise<NodeJS.Signals | null> } {
  const proc = spawn('sleep', ['60'], { stdio: 'ignore' });
  children.push(proc);
  return { proc, exited: new Promise((r) => proc.once('exit', (_code, sig) => r(sig))) };
}

test('signal() through a pidfd reaches the process, and nothing once it is reaped', async () => {
  const s = sleeper();
  using fd = pidfdOf(s.proc.pid!, 'the sleeper');
  assert.equal(signal(fd, 'SIGTERM'), true);
  assert.equal(await s.exited, 'SIGTERM');
  assert.equal(signal(fd, 'SIGKILL'), false, 'reaped: nothing to send to');
});

test('pidfdOf names the process that is gone in its error', async () => {
  const s = sleeper();
  const pid = s.proc.pid!;
  s.proc.kill('SIGKILL');
  await s.exited;
  assert.throws(() => pidfdOf(pid, 'the sleeper'), /the sleeper \(pid \d+\) is already gone/);
});

test("a pidfd's signal does not reach the process later given the same pid", async () => {
  accessSync(NS_LAST_PID, constants.W_OK); // needs root, as audit-scan-pid-reuse.test.ts does
  const first = sleeper();
  const pid = first.proc.pid!;
  using fd = pidfdOf(pid, 'the first sleeper');
  first.proc.kill('SIGKILL');
  await first.exited;
  await until(`pid ${pid} to be free`, () => !existsSync(`/proc/${pid}`), 30_000);
  let second: ReturnType<typeof sleeper> | null = null;
  for (let i = 0; i < 50 && second === null; i++) {
    writeFileSync(NS_LAST_PID, String(pid - 1));
    const s = sleeper();
    if (s.proc.pid === pid) second = s;
    else s.proc.kill('SIGKILL');
  }
  assert.ok(second, `no process got pid ${pid} in 50 tries`);
  assert.equal(signal(fd, 'SIGKILL'), false, 'the pidfd names the first sleeper, which is gone');
  assert.equal(second.proc.exitCode ?? second.proc.signalCode, null, 'the second lives');
  second.proc.kill('SIGTERM');
  assert.equal(await second.exited, 'SIGTERM', 'it lived until this test ended it');
});

test('confirmedPidfd: the pidfd of the pid asked twice; refused when the answer changes', async () => {
  const a = sleeper();
  const b = sleeper();
  const fd = await confirmedPidfd(async () => a.proc.pid!, 'a');
  assert.equal(fd.pid, a.proc.pid);
  fd.close();
  const answers = [a.proc.pid!, b.proc.pid!];
  await assert.rejects(
    confirmedPidfd(async () => answers.shift()!, 'the broker'),
    /the broker was pid \d+, now \d+/,
  );
  a.proc.kill('SIGKILL');
  b.proc.kill('SIGKILL');
  await Promise.all([a.exited, b.exited]);
});
