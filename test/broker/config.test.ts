// Config validation: every mistake names its field.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import * as config from '../../src/broker/config.js';
import {
  ConfigError,
  configFromObject,
  defaultConfig,
  defaultRule,
  parseConfig,
} from '../../src/broker/config.js';
import * as schema from '../../src/broker/config-schema.js';
import { DevleaseError } from '../../src/errors.js';
import { DEVLEASE_BIN } from '../../src/util/processes.js';

const bad = (toml: string, field: RegExp) => {
  assert.throws(
    () => parseConfig(toml),
    (err: unknown) =>
      err instanceof ConfigError &&
      err instanceof DevleaseError &&
      err.code === 'ERR_DEVLEASE_CONFIG' &&
      field.test(err.message),
    `expected a ConfigError matching ${field} for:\n${toml}`,
  );
};

test('a full config parses, with sizes in units and octal modes', () => {
  const c = parseConfig(`
rundir = "/tmp/x"
[device]
name = "acc0"
reconnect_initial_ms = 10
reconnect_max_ms = 500
[sockets]
mode = 0o660
[lifetime]
revoke = false
default_deadline_ms = 250
prepared_slice_fds = 3
[sa1]
window_size = "256MiB"
[[policy.rule]]
uid = 1000
kinds = ["queue"]
max_leases = 2
max_mapped_bytes = "1GiB"
[[policy.rule]]
any = true
max_leases = 0
`);
  assert.equal(c.rundir, '/tmp/x');
  assert.equal(c.deviceName, 'acc0');
  assert.deepEqual(c.reconnect, { enabled: true, initialMs: 10, maxMs: 500 });
  assert.equal(c.sockets.mode, 0o660);
  assert.equal(c.lifetime.revoke, false);
  assert.equal(c.lifetime.preparedSliceFds, 3);
  assert.equal(parseConfig('').lifetime.preparedSliceFds, 8, 'eight prepared slice fds at most by default');
  assert.equal(c.sa1.windowSize, 256n << 20n);
  assert.equal(c.policy.rules.length, 2);
  assert.equal(c.policy.rules[0]!.maxMappedBytes, 1n << 30n);
  assert.deepEqual(c.policy.rules[1]!.match, { any: true });
});

test('every config owns its rules: editing one config (or a default rule) changes no other', () => {
  const a = defaultConfig();
  for (const r of a.policy.rules) {
    r.kinds.push('other');
    r.maxLeases = 1;
    r.maxMappings = 1;
  }
  defaultRule().kinds.push('mine');
  for (const c of [defaultConfig(), configFromObject({}), parseConfig('[[policy.rule]]\nuid = 7\n')]) {
    const last = c.policy.rules.at(-1)!;
    assert.deepEqual(last.kinds, ['*']);
    assert.equal(last.maxMappings, 1024);
    assert.equal(last.maxLeases, 'fair');
    for (const r of c.policy.rules) assert.deepEqual(r.kinds, ['*'], JSON.stringify(r.match));
  }
  assert.deepEqual(defaultRule(), {
    match: { any: true },
    kinds: ['*'],
    maxLeases: 'fair',
    maxMappedBytes: 1n << 32n,
    maxMappings: 1024,
  });
});

test('config.ts re-exports all of config-schema.ts (the broker imports its configuration from one place)', () => {
  const missing = Object.keys(schema).filter(
    (k) => (config as Record<string, unknown>)[k] !== (schema as Record<string, unknown>)[k],
  );
  assert.deepEqual(missing, []);
});

test('each kind of mistake names the field', () => {
  bad('rundir = 3', /rundir: must be a non-empty string/);
  bad('[sockets]\nmode = 0o1777', /sockets\.mode: must be an integer from 0 to 511/);
  bad('[layout]\npage_size = 6000', /layout\.page_size: must be a power of two/);
  bad('[layout]\npage_size = 131072', /layout\.page_size: must be an integer from 4096 to 65536/);
  bad('[sa1]\nwindow_size = "3MiB"', /sa1\.window_size: must be a power of two/);
  bad('[sa1]\nwindow_size = "lots"', /sa1\.window_size: must be a byte size/);
  bad('[lifetime]\nrevoke = "yes"', /lifetime\.revoke: must be true or false/);
  bad('[lifetime]\nrevokee = true', /lifetime\.revokee: unknown key/);
  bad(
    '[lifetime]\nprepared_slice_fds = -1',
    /lifetime\.prepared_slice_fds: must be an integer from 0 to 1024 \(got -1\)/,
  );
  bad(
    '[lifetime]\nprepared_slice_fds = 4096',
    /lifetime\.prepared_slice_fds: must be an integer from 0 to 1024/,
  );
  bad('[[policy.rule]]\nkinds = ["queue"]', /policy\.rule\[0\]: needs exactly one of uid, gid or any/);
  bad('[[policy.rule]]\nuid = 5\nmax_leases = -1', /policy\.rule\[0\]\.max_leases/);
  bad('[device]\nname = "a/b"', /device\.name: may contain only/);
  // It names a folder under rundir: ".." put the device's sockets in rundir's parent.
  bad('[device]\nname = ".."', /device\.name: .*not be "\." or "\.\." .*got "\.\."/);
  bad('[device]\nname = "."', /device\.name: .*got "\."/);
  bad('[device]\nname = ""', /device\.name: must be a non-empty string/);
  bad('[policy]\nload_timeout_ms = 0', /policy\.load_timeout_ms: must be an integer from 1 to 600000/);
  bad('[policy]\nrecheck_timeout_ms = 0', /policy\.recheck_timeout_ms: must be an integer from 1/);
  bad('[device]\nreconnect = 1', /device\.reconnect: must be true or false/);
  bad('[device]\nreconnect_initial_ms = 0', /device\.reconnect_initial_ms: must be an integer from 1/);
  bad(
    '[device]\nreconnect_initial_ms = 500\nreconnect_max_ms = 100',
    /device\.reconnect_max_ms: must be at least device\.reconnect_initial_ms \(500\), got 100/,
  );
  bad('this is = not toml =', /\(file\): config is not valid TOML/);
});

test('devlease daemon exits non-zero naming the bad field', () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-cfg-'));
  try {
    const file = join(dir, 'bad.toml');
    writeFileSync(file, '[lifetime]\ndefault_deadline_ms = "soon"\n');
    const r = spawnSync(
      process.execPath,
      [DEVLEASE_BIN, 'daemon', '--device', 'vfio-user:/nonexistent', '--config', file],
      {
        encoding: 'utf8',
      },
    );
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /lifetime\.default_deadline_ms: must be an integer/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
