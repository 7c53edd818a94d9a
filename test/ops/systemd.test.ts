// The shipped systemd units (contrib/systemd) and socket activation.
//
// - `systemd-analyze verify` (Debian's systemd, installed by .ci/run when missing) accepts every unit, with
//   no warning, in a scratch root holding the units, the host's own system units and a stand-in executable.
// - The broker started by `systemd-socket-activate` serves a lease through the socket it inherited. The
//   admin socket is SOCK_SEQPACKET, which one systemd-socket-activate cannot mix with a stream socket, so an
//   outer one (--seqpacket) makes it and the inner one (which passes inherited sockets on) the lease
//   socket: the broker gets both, named by --fdname like FileDescriptorName=. Activation is lazy as under
//   systemd: the broker starts when a client connects, and that client's connection is served.
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import {
  chmodSync,
  cpSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { adminRequest } from '../../src/cli/admin.js';
import { spawnSimulator } from '../../src/sim/host/child.js';
import { SeqpacketSocket } from '../../src/sys/index.js';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { ClientProc, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';

const here = dirname(fileURLToPath(import.meta.url));
const UNITS = join(here, '..', '..', '..', 'contrib', 'systemd');
const INSTANCE_UNITS = [
  'devlease@sa1.service',
  'devlease@sa1.socket',
  'devlease-admin@sa1.socket',
  'devlease-sim@sa1.service',
];

after(trackFdLeaks());

function need(tool: string, pkg: string): string {
  const r = spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' });
  if (r.status !== 0) assert.fail(`${tool} is missing: install Debian's '${pkg}' package (.ci/run does)`);
  return r.stdout.trim();
}

/** A scratch root for `systemd-analyze verify --root`: the units, the host's system units, the ExecStart path. */
function verifyRoot(units: string): string {
  const root = mkdtempSync(join(tmpdir(), 'devlease-units-'));
  mkdirSync(join(root, 'etc/systemd/system'), { recursive: true });
  for (const f of readdirSync(units)) {
    if (/\.(service|socket)$/.test(f)) cpSync(join(units, f), join(root, 'etc/systemd/system', f));
  }
  // sysinit.target, sockets.target... as on the host, so dependencies resolve.
  cpSync('/usr/lib/systemd/system', join(root, 'usr/lib/systemd/system'), {
    recursive: true,
    dereference: false,
  });
  mkdirSync(join(root, 'usr/local/bin'), { recursive: true });
  writeFileSync(join(root, 'usr/local/bin/devlease'), '#!/bin/sh\n');
  chmodSync(join(root, 'usr/local/bin/devlease'), 0o755);
  return root;
}

function verify(root: string): { status: number | null; output: string } {
  const r = spawnSync('systemd-analyze', ['verify', `--root=${root}`, ...INSTANCE_UNITS], {
    encoding: 'utf8',
  });
  return { status: r.status, output: `${r.stdout}${r.stderr}`.trim() };
}

test('systemd-analyze verify accepts the shipped units without a warning', () => {
  need('systemd-analyze', 'systemd');
  const root = verifyRoot(UNITS);
  try {
    const r = verify(root);
    assert.equal(r.output, '', `systemd-analyze verify said:\n${r.output}`);
    assert.equal(r.status, 0);
    // The check has teeth: a misspelt directive is reported.
    const unit = join(root, 'etc/systemd/system/devlease@.service');
    writeFileSync(
      unit,
      `${execFileSync('cat', [unit], { encoding: 'utf8' })}\n[Service]\nProtectSytem=strict\n`,
    );
    assert.match(verify(root).output, /Unknown key 'ProtectSytem'/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

function lines(proc: ChildProcess, stream: 'stdout' | 'stderr'): string[] {
  const out: string[] = [];
  createInterface({ input: proc[stream]! }).on('line', (l) => out.push(l));
  return out;
}

test('a broker started by systemd-socket-activate serves a lease and the admin socket it inherited', async () => {
  need('systemd-socket-activate', 'systemd');
  const dir = mkdtempSync(join(tmpdir(), 'devlease-activate-'));
  const run = join(dir, 'run', 'sa1');
  mkdirSync(run, { recursive: true });
  const leaseSock = join(run, 'queue.sock');
  const adminSock = join(run, 'admin.sock');
  const sim = await spawnSimulator({ socketPath: join(dir, 'sim.sock'), numQueues: 4 });
  const config = join(dir, 'broker.toml');
  writeFileSync(config, `rundir = "${join(dir, 'run')}"\n[sockets]\nmode = 0o666\n[admin]\nmode = 0o600\n`);
  const activator = spawn(
    'systemd-socket-activate',
    [
      '--seqpacket',
      `--listen=${adminSock}`,
      '--fdname=admin',
      '--',
      'systemd-socket-activate',
      `--listen=${leaseSock}`,
      '--fdname=admin:queue',
      '--',
      process.execPath,
      DEVLEASE_BIN,
      'daemon',
      '--device',
      `vfio-user:${sim.socketPath}`,
      '--config',
      config,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const exited = once(activator, 'exit');
  const out = lines(activator, 'stdout');
  const err = lines(activator, 'stderr');
  let client: ClientProc | null = null;
  try {
    await until('the admin socket to be listening', () => exists(adminSock), 20_000);
    // The modes and groups are the socket unit's (SocketMode=): set here, before the broker exists.
    chmodSync(adminSock, 0o660);
    const adminIno = statSync(adminSock).ino;
    // The first admin connection starts the inner activator, which makes the lease socket.
    // systemd-socket-activate binds (the file appears) before it listens: until then a connect is refused.
    let wake: SeqpacketSocket | null = null;
    await until(
      'the admin socket to accept a connection',
      () => {
        try {
          wake = SeqpacketSocket.connect(adminSock);
          return true;
        } catch (e) {
          if ((e as { code?: string }).code === 'ECONNREFUSED') return false;
          throw e;
        }
      },
      20_000,
    );
    await until('the lease socket to be listening', () => exists(leaseSock), 20_000);
    chmodSync(leaseSock, 0o606);
    const leaseIno = statSync(leaseSock).ino;
    // This client's connection starts the broker, which serves it from the inherited socket.
    client = await ClientProc.spawn();
    const { info } = await client.call('connect', { socket: leaseSock });
    assert.equal(info.kind, 'queue');
    await client.call('queue');
    await client.call('alloc', { name: 'a', size: 4096 });
    await until('the daemon to say ready', () => out.some((l) => l.includes('"event":"ready"')), 20_000);
    (wake as SeqpacketSocket | null)?.close();

    // The admin socket the broker serves is the inherited one.
    const leases = (await adminRequest(adminSock, { op: 'leases' })) as { id: string; pid: number }[];
    assert.deepEqual(
      leases.map((l) => l.pid),
      [client.pid],
    );
    // The broker neither re-bound nor re-moded the sockets it was given (its config says 0o666 / 0o600).
    assert.equal(statSync(leaseSock).ino, leaseIno);
    assert.equal(statSync(adminSock).ino, adminIno);
    assert.equal(statSync(leaseSock).mode & 0o777, 0o606);
    assert.equal(statSync(adminSock).mode & 0o777, 0o660);
    assert.ok(
      out.some((l) => l.includes('"event":"grant"') && l.includes(`"pid":${client!.pid}`)),
      'the grant is in the audit log',
    );

    await client.exit();
    client = null;
    await until(
      'the lease to be reclaimed',
      async () => {
        const ls = (await adminRequest(adminSock, { op: 'leases' })) as unknown[];
        return ls.length === 0;
      },
      20_000,
    );
  } catch (e) {
    process.stderr.write(`activator stderr:\n${err.join('\n')}\nstdout:\n${out.join('\n')}\n`);
    throw e;
  } finally {
    await client?.kill();
    if (activator.exitCode === null) activator.kill('SIGTERM');
    await exited;
    await sim.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an inherited socket of the wrong type is refused, naming it', async () => {
  need('systemd-socket-activate', 'systemd');
  const dir = mkdtempSync(join(tmpdir(), 'devlease-activate-'));
  const sim = await spawnSimulator({ socketPath: join(dir, 'sim.sock'), numQueues: 2 });
  const sock = join(dir, 'admin.sock');
  // A stream socket named 'admin': the admin socket must be SOCK_SEQPACKET.
  const activator = spawn(
    'systemd-socket-activate',
    [
      `--listen=${sock}`,
      '--fdname=admin',
      '--',
      process.execPath,
      DEVLEASE_BIN,
      'daemon',
      '--device',
      `vfio-user:${sim.socketPath}`,
      '--rundir',
      join(dir, 'run'),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const exited = once(activator, 'exit');
  const err = lines(activator, 'stderr');
  try {
    await until('the socket to be listening', () => exists(sock), 20_000);
    const poke = spawn(process.execPath, [
      '-e',
      `require('node:net').connect(${JSON.stringify(sock)}).on('error', () => {})`,
    ]);
    const [code] = await within(exited, 'the daemon refusing the stream socket and exiting', 30_000);
    poke.kill();
    assert.equal(code, 1);
    assert.ok(
      err.some((l) => l.includes("socket 'admin'") && l.includes('is stream; it must be seqpacket')),
      err.join('\n'),
    );
  } finally {
    if (activator.exitCode === null) activator.kill('SIGKILL');
    await sim.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

function exists(p: string): boolean {
  try {
    statSync(p);
    return true;
  } catch {
    return false;
  }
}
