// `devlease daemon --device-fd N [--iommufd-fd M]` as a real child process
// with inherited descriptors. This host has no VFIO, so the descriptors
// passed are /dev/null: the daemon must take them, hand them to the kernel
// backend, and fail with the kernel's answer (ENOTTY for the bind) named.
// Driving a real device through passed fds is the guest tests' job.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Fd } from '../../src/sys/fd.js';
import { native } from '../../src/sys/native.js';
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
  // What the daemon opens once past its options, made observable: a vfio-user device socket (a connection to it
  // waits in the backlog) and its rundir (made when the broker starts).
  const dir = mkdtempSync(join(tmpdir(), 'devlease-daemon-fds-'));
  const device = join(dir, 'device.sock');
  const listener = new Fd(native.unixListen(device, 0o600, 8, true));
  const run = join(dir, 'run');
  const refused = (args: string[]) => {
    const r = daemon([...args, '--rundir', run]);
    assert.equal(
      native.unixAccept(listener.fd),
      -1,
      `${args.join(' ')}: the device socket was not connected to`,
    );
    assert.equal(existsSync(run), false, `${args.join(' ')}: no rundir was made`);
    return r;
  };
  try {
    let r = refused([]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /give --device or --device-fd/);
    r = refused(['--device', `vfio-user:${device}`, '--device-fd', '3']);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /give --device or --device-fd/);
    r = refused(['--device-fd', '1']);
    assert.equal(r.status, 2, 'not a descriptor number past stdio: a usage error');
    assert.match(r.stderr, /--device-fd must be an inherited descriptor number >= 3/);
    r = refused(['--device-fd', '57']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--device-fd 57: .*EBADF|--device-fd 57: .*bad file descriptor/i);
  } finally {
    listener.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
