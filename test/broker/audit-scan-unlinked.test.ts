// The /proc audit of direct slices (src/broker/audit-scan) once the device file's name is gone: a device node
// removed (and made again) by udev, or by hand, while fds of it are open. Each fd's /proc link then reads
// "<path> (deleted)"; the file is the same one (stat says so). A real process holds an fd of, and maps, a
// regular file standing in for the device node, which this test then unlinks.
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { identityOfFd, scanProc } from '../../src/broker/audit-scan/proc-scan.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { closeMappers, startMapper } from '../helpers/mapper.js';

const leakCheck = trackFdLeaks();
after(async () => {
  await closeMappers();
  await leakCheck();
});

test('a process holding an fd of the device file is found after the file was unlinked', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-audit-unlinked-'));
  const file = join(dir, 'vfio0');
  const fd = openSync(file, 'w+');
  ftruncateSync(fd, 4 * 4096);
  const target = identityOfFd(fd); // the broker's, taken at its start
  const m = await startMapper(file, 4096, 4096, ['--keep-fd']);
  const proc = m.proc;
  try {
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
    await m.close();
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
});
