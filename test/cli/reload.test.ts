// `devlease daemon` reloads on SIGHUP, and `devlease reload` asks it to over
// the admin socket: both re-read the --config file; a refused one is
// reported to the caller (exit 1, the reason) and the daemon keeps serving.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { type ChildSimulator, spawnSimulator } from '../../src/sim/host/child.js';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { stopChild } from '../helpers/stop-child.js';
import { until } from '../interop/helpers/peers.js';

const leakCheck = trackFdLeaks();
after(leakCheck);
const sha = (s: string) => createHash('sha256').update(s).digest('hex');

test('SIGHUP reloads the daemon; devlease reload of a bad file fails with the reason and the daemon serves on', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-reload-cli-'));
  let sim: ChildSimulator | null = null;
  let daemon: ChildProcess | null = null;
  try {
    sim = await spawnSimulator({ socketPath: join(dir, 'sim.sock'), numQueues: 4 });
    const file = join(dir, 'broker.toml');
    const first = '[policy]\nhook_timeout_ms = 200\n';
    writeFileSync(file, first);
    const run = join(dir, 'run');
    daemon = spawn(
      process.execPath,
      [DEVLEASE_BIN, 'daemon', '--device', `vfio-user:${sim.socketPath}`, '--config', file, '--rundir', run],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    daemon.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
    });
    daemon.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
    });
    const events = () =>
      out
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, any>);
    await until('the daemon to be ready', () => events().some((e) => e.event === 'ready'), 30_000);
    assert.equal(events().find((e) => e.event === 'start')?.config.config, sha(first));

    const second = '[policy]\nhook_timeout_ms = 300\n';
    writeFileSync(file, second);
    daemon.kill('SIGHUP');
    await until('the reload on SIGHUP', () => events().some((e) => e.event === 'reload'), 30_000);
    const reload = events().find((e) => e.event === 'reload')!;
    assert.equal(reload.config.config, sha(second));
    assert.equal(reload.previous.config, sha(first));

    writeFileSync(file, '[policy]\nhook_timeout_ms = "slow"\n');
    const admin = join(run, 'sa1', 'admin.sock');
    const r = spawnSync(process.execPath, [DEVLEASE_BIN, 'reload', '--admin', admin], { encoding: 'utf8' });
    assert.equal(r.status, 1, r.stderr);
    assert.match(
      r.stderr,
      /reload refused, nothing changed: config: policy\.hook_timeout_ms: must be an integer/,
    );
    // (spawnSync held this event loop: the daemon's stderr is read now.)
    await until('the daemon to log the refusal', () =>
      /reload of .* refused, nothing changed: config: policy\.hook_timeout_ms/.test(err),
    );
    assert.ok(daemon.exitCode === null && daemon.signalCode === null, 'the daemon serves on');
    const s = spawnSync(process.execPath, [DEVLEASE_BIN, 'status', '--json', '--admin', admin], {
      encoding: 'utf8',
    });
    assert.equal(s.status, 0, s.stderr);
  } finally {
    await stopChild(daemon);
    await sim?.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
