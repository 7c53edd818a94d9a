// The daemon's own log ([log] in the config, docs/OPERATIONS.md): pino JSON
// lines on stderr when stderr is not a terminal, human-readable ones when it
// is (or when format = "pretty"), filtered by level; the audit log on stdout
// is untouched. A line the broker logs on demand: a refused reload.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { type ChildSimulator, spawnSimulator } from '../../src/sim/host/child.js';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { stopChild } from '../helpers/stop-child.js';
import { within } from '../helpers/within.js';
import { until } from '../interop/helpers/peers.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

/**
 * Start a daemon with `logSection`, make it log a refused reload, end it, and return all it wrote to stderr and
 * stdout, read to their end: the audit line (stdout) is written before the log line (stderr), and two pipes
 * arrive in no order the reader can rely on. `loseDevice`: end it by closing its device with
 * device.reconnect = false, which it logs at fatal (a line every level passes), instead of by SIGTERM.
 */
async function refusedReloadLines(
  logSection: string,
  opts: { wrap?: (argv: string[]) => [string, string[]]; loseDevice?: boolean } = {},
): Promise<{ err: string; out: string; code: number | null }> {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-log-'));
  let sim: ChildSimulator | null = null;
  let daemon: ChildProcess | null = null;
  try {
    sim = await spawnSimulator({ socketPath: join(dir, 'sim.sock'), numQueues: 2 });
    const file = join(dir, 'broker.toml');
    const device = opts.loseDevice ? '[device]\nreconnect = false\n' : '';
    writeFileSync(file, `${logSection}\n${device}[policy]\nhook_timeout_ms = 200\n`);
    const run = join(dir, 'run');
    const argv = [
      DEVLEASE_BIN,
      'daemon',
      '--device',
      `vfio-user:${sim.socketPath}`,
      '--config',
      file,
      '--rundir',
      run,
    ];
    const [cmd, args] = opts.wrap ? opts.wrap([process.execPath, ...argv]) : [process.execPath, argv];
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    daemon = child;
    // 'close' comes once the process is gone and both pipes have ended: all it wrote has been read.
    const closed = new Promise<number | null>((r) => child.once('close', (code) => r(code)));
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
    });
    await until('the daemon to be ready', () => out.includes('"event":"ready"'), 30_000);
    writeFileSync(file, `${logSection}\n${device}[policy]\nhook_timeout_ms = "slow"\n`);
    const r = spawnSync(
      process.execPath,
      [DEVLEASE_BIN, 'reload', '--admin', join(run, 'sa1', 'admin.sock')],
      {
        encoding: 'utf8',
      },
    );
    assert.equal(r.status, 1, r.stderr);
    await until('the refusal in the audit log', () => out.includes('"reload-refused"'), 10_000);
    if (opts.loseDevice) {
      await sim.close();
      sim = null;
    } else {
      await stopChild(child);
    }
    const code = await within(closed, 'the daemon to exit and its output to end', 30_000);
    return { err, out, code };
  } finally {
    await stopChild(daemon);
    await sim?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const REFUSAL = /reload of .* refused, nothing changed: config: policy\.hook_timeout_ms/;

test('stderr not a terminal: one JSON object per line (level, time, pid, msg); the audit log stays on stdout', async () => {
  const { err, out } = await refusedReloadLines('');
  const lines = err.split('\n').filter((l) => l.trim() !== '');
  assert.ok(lines.length > 0, 'the daemon logged something');
  const records = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  const refusal = records.find((r) => REFUSAL.test(String(r.msg)));
  assert.ok(refusal, `the refusal is a log record: ${err}`);
  assert.equal(refusal.level, 30, 'info');
  assert.equal(refusal.name, 'devlease');
  assert.equal(typeof refusal.time, 'number');
  assert.equal(typeof refusal.pid, 'number');
  assert.doesNotMatch(out, /"level":/, 'no log record on the audit stream');
});

test('[log] level = "warn" drops info lines; format = "pretty" is for people, not JSON', async () => {
  const quiet = await refusedReloadLines('[log]\nlevel = "warn"', { loseDevice: true });
  // The fatal line, logged after the refusal, shows the log was read past where the refusal would be.
  assert.equal(quiet.code, 1, 'the daemon exits when its device is lost');
  assert.match(quiet.err, /the device is lost: .*; exiting/, 'a fatal line passes the warn level');
  assert.doesNotMatch(quiet.err, REFUSAL, 'an info line is filtered out at warn');
  const pretty = await refusedReloadLines('[log]\nformat = "pretty"');
  const line = pretty.err.split('\n').find((l) => REFUSAL.test(l));
  assert.ok(line, `the refusal is logged: ${pretty.err}`);
  assert.match(line, /INFO/);
  assert.throws(() => JSON.parse(line), 'not a JSON line');
});

test('format = "auto" on a terminal is human-readable (script(1) gives the daemon a pty)', async () => {
  const script = spawnSync('script', ['--version'], { encoding: 'utf8' });
  assert.equal(
    script.status,
    0,
    `script(1) from util-linux is needed for this test: ${script.error ?? script.stderr}`,
  );
  // script runs the daemon on a pty and copies everything it writes to its own stdout.
  const { out } = await refusedReloadLines('', {
    wrap: (argv) => ['script', ['-qfec', argv.map((a) => `'${a}'`).join(' '), '/dev/null']],
  });
  const line = out.split('\n').find((l) => REFUSAL.test(l));
  assert.ok(line, `the refusal is on the terminal: ${out.slice(-2000)}`);
  assert.match(line, /INFO/);
  assert.doesNotMatch(line, /^\s*\{"level"/);
});

test('a bad [log] level or format is refused at start, naming the key', () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-log-bad-'));
  try {
    for (const [section, key] of [
      ['[log]\nlevel = "loud"', 'log.level'],
      ['[log]\nformat = "xml"', 'log.format'],
    ] as const) {
      const file = join(dir, 'broker.toml');
      writeFileSync(file, section);
      const r = spawnSync(
        process.execPath,
        [DEVLEASE_BIN, 'daemon', '--device', 'vfio-user:/nonexistent', '--config', file],
        {
          encoding: 'utf8',
        },
      );
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, new RegExp(`config: ${key.replace('.', '\\.')}: must be`));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
