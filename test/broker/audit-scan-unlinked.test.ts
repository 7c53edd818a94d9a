// The /proc audit of direct slices (src/broker/audit-scan) once the device file's name is gone: a device node
// removed (and made again) by udev, or by hand, while fds of it are open. Each fd's /proc link then reads
// "<path> (deleted)"; the file is the same one (stat says so). A real process holds an fd of, and maps, a
// regular file standing in for the device node, which this test then unlinks.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { identityOfFd, scanProc } from '../../src/broker/audit-scan/proc-scan.js';
import { trackFdLeaks } from '../helpers/fds.js';

const mapper = join(dirname(fileURLToPath(import.meta.url)), '../fixtures/audit/mapper.js');
const children: ChildProcess[] = [];
const leakCheck = trackFdLeaks();
after(() => {
  for (const c of children) c.kill('SIGKILL');
  return leakCheck();
});

test('a process holding an fd of the device file is found after the file was unlinked', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-audit-unlinked-'));
  const file = join(dir, 'vfio0');
  const fd = openSync(file, 'w+');
  ftruncateSync(fd, 4 * 4096);
  const target = identityOfFd(fd); // the broker's, taken at its start
  const proc = spawn(process.execPath, [mapper, file, '4096', '4096', '--keep-fd'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(proc);
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  try {
    await new Promise((r) => createInterface({ input: proc.stdout! }).once('line', r));
    assert.deepEqual(
      scanProc(target, new Set([process.pid])).fds.map((f) => f.pid),
      [proc.pid],
    );
    unlinkSync(file);
    const r = scanProc(target, new Set([process.pid]));
    assert.deepEqual(
      r.maps.map((m) => m.pid),
      [proc.pid],
      'its mapping (maps names the file by dev:inode)',
    );
    assert.deepEqual(
      r.fds.map((f) => f.pid),
      [proc.pid],
      'its fd, whose link now reads "(deleted)"',
    );
  } finally {
    proc.kill('SIGKILL');
    await exited;
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
});
