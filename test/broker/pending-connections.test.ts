// Idle connections must not exhaust the broker. Each accepted lease connection
// costs a socket and a pidfd before it sends VERSION; with a low fd limit an
// attacker holding hundreds of idle connections used to take every descriptor,
// after which nobody else was accepted. Now connections waiting for VERSION
// are capped per uid (and in all), one past the cap is closed at once, and
// each must complete VERSION within sockets.version_timeout_ms. The daemon
// runs with `ulimit -n 256`; the attacker runs as another uid.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, test } from 'node:test';
import { spawnSimulator } from '../../src/sim/host/child.js';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { ClientProc, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { cpuDuring, fdCount } from '../helpers/proc-stat.js';

// The daemon's fds are counted below; this process's (the simulator's control channel, the client's and
// children's pipes) here.
after(trackFdLeaks());

const FD_LIMIT = 256;
const ATTACK = 300;
const PER_UID = 32;
const NUM_QUEUES = 4;
/** The defaults: sockets.max_pending_per_uid and sockets.version_timeout_ms. */
const VERSION_TIMEOUT_MS = 5000;
const NOBODY = 65534;

/** Opens `n` connections to argv[1] and holds them, saying nothing; reports how many the server closed. */
const ATTACKER = `
const net = require('node:net');
const n = Number(process.argv[2]);
let connected = 0, closed = 0;
const socks = [];
for (let i = 0; i < n; i++) {
  const s = net.connect(process.argv[1]);
  s.on('connect', () => { if (++connected === n) console.log('connected ' + n); });
  s.on('error', () => {});
  s.on('close', () => console.log('closed ' + ++closed));
  socks.push(s);
}
process.stdin.resume();
process.stdin.on('end', () => { for (const s of socks) s.destroy(); process.stdin.pause(); });
`;

function lines(proc: ChildProcess, stream: 'stdout' | 'stderr'): string[] {
  const out: string[] = [];
  createInterface({ input: proc[stream]! }).on('line', (l) => out.push(l));
  return out;
}

test(`an attacker holding ${ATTACK} idle connections (ulimit -n ${FD_LIMIT}) does not stop a client from leasing`, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-pending-'));
  chmodSync(dir, 0o755); // the attacker's uid reaches the 0666 lease socket, as under /run/devlease
  const sim = await spawnSimulator({ socketPath: join(dir, 'sim.sock'), numQueues: NUM_QUEUES });
  const config = join(dir, 'broker.toml');
  writeFileSync(config, `rundir = "${join(dir, 'run')}"\n`);
  const daemon = spawn(
    'bash',
    [
      '-c',
      `ulimit -n ${FD_LIMIT} && exec "$@"`,
      'bash',
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
  const daemonExit = once(daemon, 'exit');
  const audit = lines(daemon, 'stdout');
  const log = lines(daemon, 'stderr');
  let attacker: ChildProcess | null = null;
  let client: ClientProc | null = null;
  try {
    await until('the daemon to be ready', () => audit.some((l) => l.includes('"event":"ready"')), 10_000);
    const ready = JSON.parse(audit.find((l) => l.includes('"event":"ready"'))!);
    const socket: string = ready.sockets.queue;
    const pid = daemon.pid!;
    const baseline = fdCount(pid);

    client = await ClientProc.spawn(); // ready before the attack: the deadline runs from here
    attacker = spawn(process.execPath, ['-e', ATTACKER, socket, String(ATTACK)], {
      uid: NOBODY,
      gid: NOBODY,
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const said = lines(attacker, 'stdout');
    await until('the attacker to connect', () => said.includes(`connected ${ATTACK}`), 10_000);
    const closedByBroker = () => said.filter((l) => l.startsWith('closed ')).length;
    await new Promise((r) => setTimeout(r, 300)); // the broker has the whole backlog before the client comes
    // While the attacker holds its connections, a well-behaved client leases and works.
    await client.call('connect', { socket });
    await client.call('queue');
    assert.equal((await client.call('submit', { desc: { opcode: 'NOP' } })).status, 'OK');
    await client.exit();
    client = null;

    // Past the per-uid cap, connections are closed as soon as they are accepted.
    await until(
      'the connections over the cap to be closed',
      () => closedByBroker() >= ATTACK - PER_UID,
      5000,
    );
    assert.equal(closedByBroker(), ATTACK - PER_UID, 'the cap admitted exactly max_pending_per_uid');
    // Each held connection costs a socket and a pidfd, no more. The client's queue grant made the broker
    // fetch the device's ioeventfds, one per queue page (doorbell notification, rev 2), which it keeps for
    // the device connection's lifetime: they count on top of the baseline from here on.
    const keptIoFds = NUM_QUEUES;
    assert.ok(
      fdCount(pid) <= baseline + keptIoFds + 2 * PER_UID + 8,
      `${fdCount(pid) - baseline} fds over baseline`,
    );

    // Not spinning: a few seconds of an attack in progress cost little CPU (generous bound).
    const cpu = await cpuDuring(pid, 1500);
    assert.ok(cpu < 0.5, `the broker used ${cpu.toFixed(2)} s of CPU in 1.5 s`);

    // The deadline frees the held ones: every connection closed, the broker back to its descriptors.
    await until('the deadline to close the held connections', () => closedByBroker() === ATTACK, 10_000);
    await until(
      'the broker to be back to its baseline fds',
      () => fdCount(pid) <= baseline + keptIoFds + 2,
      5000,
    );
    const refusedLines = log.filter((l) => /refused a connection from uid 65534/.test(l));
    assert.ok(refusedLines.length >= 1 && refusedLines.length <= 5, `${refusedLines.length} refusal lines`);
    assert.match(refusedLines[0]!, /max_pending_per_uid = 32/);
    assert.ok(
      log.some((l) => l.includes(`no VERSION completed in ${VERSION_TIMEOUT_MS} ms`)),
      log.join('\n'),
    );
    // Not flooding: a handful of lines for ${ATTACK} connections.
    assert.ok(log.length <= 20, `the broker wrote ${log.length} log lines:\n${log.join('\n')}`);
  } finally {
    await client?.exit();
    if (attacker) {
      attacker.stdin!.end();
      if (attacker.exitCode === null) await once(attacker, 'exit');
    }
    daemon.kill('SIGTERM');
    await daemonExit;
    await sim.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
