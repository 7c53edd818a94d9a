// Stop a child process the test started: SIGTERM, SIGKILL after a deadline, and wait for it to close.
import type { ChildProcess } from 'node:child_process';

export async function stopChild(child: ChildProcess | null, graceMs = 10_000): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const closed = new Promise((r) => child.once('close', r));
  child.kill('SIGTERM');
  const kill = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await closed;
  clearTimeout(kill);
}
