// `devlease daemon --device-fd N [--iommufd-fd M]` as a real child process
// with inherited descriptors. This host has no VFIO, so the descriptors
// passed are /dev/null: the daemon must take them, hand them to the kernel
// backend, and fail with the kernel's answer (ENOTTY for the bind) named.
// Driving a real device through passed fds is the guest tests' job.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { after, test } from 'node:test';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

const BIN = new URL('../../../bin/devlease.js', import.meta.url).pathname;

function daemon(args: string[], inherit: number[] = []) {
  const r = spawnSync(process.execPath, [BIN, 'daemon', ...args], {
    stdio: ['ignore', 'pipe', 'pipe', ...inherit],
    encoding: 'utf8',
    timeout: 30_000,
  });
  return { status: r.status, stderr: r.stderr };
}

test('--device-fd and --iommufd-fd are handed to the kernel backend, whose ioctl errors are reported', () => {
  const a = openSync('/dev/null', 'r+');
  const b = openSync('/dev/null', 'r+');
  try {
    const r = daemon(['--device-fd', '3', '--iommufd-fd', '4', '--rundir', '/nonexistent'], [a, b]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /VFIO_DEVICE_BIND_IOMMUFD on device fd 3 \(passed in\): ENOTTY/);
  } finally {
    closeSync(a);
    closeSync(b);
  }
});

test('option mistakes are refused before anything is opened', () => {
  let r = daemon([]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /give --device or --device-fd/);
  r = daemon(['--device', 'pci:0000:00:04.0', '--device-fd', '3']);
  assert.equal(r.status, 2);
  r = daemon(['--device-fd', '1']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /--device-fd must be an inherited descriptor number >= 3/);
  r = daemon(['--device-fd', '57']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /--device-fd 57: .*EBADF|--device-fd 57: .*bad file descriptor/i);
});
