// `devlease daemon` with a configuration it cannot carry out: one line naming the key and the problem, a
// non-zero exit (2: refused before the device was opened; 1: at the start), and nothing left behind — no
// socket file, no process still running (a start that failed once hung with a socket left listening).
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { trackFdLeaks } from '../helpers/fds.js';
import { assertFailed, runCli, startSim } from './run-cli.js';

const leakCheck = trackFdLeaks(); // the children's pipes, the simulators' too, all closed
const dir = mkdtempSync(join(tmpdir(), 'devlease-badcfg-'));
chmodSync(dir, 0o777); // the unprivileged daemon below writes its rundir here
let sim: Awaited<ReturnType<typeof startSim>>;
before(async () => {
  sim = await startSim(join(dir, 'sim.sock'));
});
after(async () => {
  await sim?.stop();
  rmSync(dir, { recursive: true, force: true });
  await leakCheck();
});

let n = 0;
/** `devlease daemon` on the simulator with `toml` as its config; its rundir is returned with its result. */
async function daemon(toml: string, opts: { device?: string; rundir?: string } = {}) {
  const file = join(dir, `c${++n}.toml`);
  writeFileSync(file, toml);
  const rundir = opts.rundir ?? join(dir, `run${n}`);
  const device = opts.device ?? `vfio-user:${join(dir, 'sim.sock')}`;
  const r = await runCli(['daemon', '--device', device, '--config', file, '--rundir', rundir]);
  return { ...r, rundir };
}

/** Socket files under `root` (none may be left by a start that failed). */
function sockets(root: string): string[] {
  if (!existsSync(root)) return [];
  return readdirSync(root, { recursive: true, withFileTypes: true })
    .filter((e) => e.isSocket())
    .map((e) => join(e.parentPath ?? e.path, e.name));
}

test('a gid out of range is refused at once, naming the key (it was a RangeError at the chown, and a hang)', async () => {
  for (const key of ['sockets', 'admin']) {
    const r = await daemon(`[${key}]\ngroup = 99999999999\n`);
    assertFailed(r, 2, new RegExp(`config: ${key}\\.group: must be a numeric gid from 0 to 4294967294`));
  }
  // 2^32 - 1 is chown's "no change": not a group.
  assertFailed(await daemon('[admin]\ngroup = 4294967295\n'), 2, /config: admin\.group: must be/);
});

test('audit.path that cannot be appended to is refused at start, naming it', async () => {
  const missing = join(dir, 'no-such-dir', 'audit.jsonl');
  assertFailed(
    await daemon(`[audit]\npath = "${missing}"\n`),
    2,
    /config: audit\.path: cannot create .*audit\.jsonl: its directory .*no-such-dir: ENOENT/,
  );
  assertFailed(await daemon(`[audit]\npath = "${dir}"\n`), 2, /config: audit\.path: .* is a directory/);
});

test('sa1.firmware that cannot be read is refused at start (not at the first recovery)', async () => {
  const r = await daemon(`[sa1]\nfirmware = "${join(dir, 'none.sa1f')}"\n`);
  assertFailed(r, 2, /config: sa1\.firmware: cannot read .*none\.sa1f: ENOENT/);
  assertFailed(
    await daemon(`[sa1]\nfirmware = "${dir}"\n`),
    2,
    /config: sa1\.firmware: cannot read .*: not a regular file/,
  );
});

test('a rundir too long for a unix socket path is refused naming rundir, before any folder is made', async () => {
  const long = join(dir, 'r'.repeat(100));
  const r = await daemon('', { rundir: long });
  assertFailed(
    r,
    1,
    /config: rundir: the socket .*\.sock would be \d+ bytes, longer than a unix socket path may be \(107\)/,
  );
  assert.equal(existsSync(long), false, 'no folder made for sockets that cannot be');
});

test('a rundir the kernel will not make a folder in fails the start (under /proc it spun forever)', async () => {
  const r = await daemon('', { rundir: '/proc/devlease-test' });
  assertFailed(r, 1, /config: rundir: cannot make \/proc\/devlease-test\/sa1: ENOENT/);
});

test('--device: a spec of neither form is a usage error; a socket that is not there is named', async () => {
  assertFailed(
    await daemon('', { device: 'sim.sock' }),
    2,
    /--device must be vfio-user:PATH or pci:DDDD:BB:DD\.F, got 'sim\.sock'/,
  );
  const gone = join(dir, 'gone.sock');
  assertFailed(
    await daemon('', { device: `vfio-user:${gone}` }),
    1,
    new RegExp(`cannot open vfio-user:${gone}: connect: No such file`),
  );
});

test('--device-fd / --iommufd-fd that are not descriptor numbers: usage errors naming the option', async () => {
  for (const [args, name] of [
    [['--device-fd', 'abc'], 'device-fd'],
    [['--device-fd', '2'], 'device-fd'],
    [['--device-fd', '7', '--iommufd-fd=x1'], 'iommufd-fd'],
  ] as const) {
    const r = await runCli(['daemon', ...args, '--rundir', join(dir, 'fd-run')]);
    assertFailed(
      r,
      2,
      new RegExp(`^devlease daemon: --${name} must be an inherited descriptor number >= 3, got`),
    );
    assert.deepEqual(sockets(join(dir, 'fd-run')), [], 'no socket file left');
  }
});

test('a group the broker may not give its sockets to: the start fails naming the key, and leaves nothing', async () => {
  // Unprivileged, and not a member of the group: root drops to nobody for the daemon (and its simulator, whose
  // socket is its own user's); anyone else is unprivileged already, and gets a group it is not in.
  const user = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : undefined;
  const mine = new Set(user ? [user.gid] : [process.getgid?.() ?? -1, ...(process.getgroups?.() ?? [])]);
  let gid = 0;
  while (mine.has(gid)) gid++;
  const own = user ? join(dir, 'nobody') : dir;
  if (user) {
    mkdirSync(own, { mode: 0o777 });
    chmodSync(own, 0o777);
  }
  const nobodySim = user ? await startSim(join(own, 'sim.sock'), user) : sim;
  try {
    for (const key of ['sockets', 'admin']) {
      const file = join(own, `${key}.toml`);
      writeFileSync(file, `[${key}]\ngroup = ${gid}\n`, { mode: 0o644 });
      const rundir = join(own, `run-${key}`);
      const args = [
        'daemon',
        '--device',
        `vfio-user:${join(own, 'sim.sock')}`,
        '--config',
        file,
        '--rundir',
        rundir,
      ];
      const r = await runCli(args, user ? { user } : {});
      assertFailed(r, 1, new RegExp(`config: ${key}\\.group: cannot give .*\\.sock to gid ${gid}: EPERM`));
      assert.deepEqual(sockets(rundir), [], 'no socket file left');
    }
  } finally {
    if (user) await nobodySim.stop();
  }
});

test('metrics.listen at a path a folder holds: the start fails saying it is in the way, lease sockets removed', async () => {
  const r = await daemon(`[metrics]\nlisten = "${dir}"\n`);
  assertFailed(r, 1, /metrics: cannot listen on .*: bind: .* is in the way: it exists and is not a socket/);
  assert.deepEqual(sockets(r.rundir), [], 'no socket file left');
});
