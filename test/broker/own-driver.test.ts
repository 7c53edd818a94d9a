// Drivers of one's own: a config's device.driver names a module; a bad one
// (missing, not importable, no factory, the wrong shape, matching nothing)
// fails the start with the file and the problem named, and leaves nothing
// open. A relative name is read relative to the config file.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { loadConfig } from '../../src/broker/config.js';
import { startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
const dir = mkdtempSync(join(tmpdir(), 'devlease-own-driver-'));
after(async () => {
  rmSync(dir, { recursive: true, force: true });
  await leakCheck();
});

function module(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

const cases: { what: string; path: () => string; code: string; problem: RegExp }[] = [
  { what: 'a missing file', path: () => join(dir, 'nowhere.js'), code: 'ENOENT', problem: /no such file/ },
  {
    what: 'a module that does not import',
    path: () => module('syntax.js', 'export const driverFactory = {;\n'),
    code: 'EINVAL',
    problem: /cannot be imported: .*Unexpected token/,
  },
  {
    what: 'a module exporting no factory',
    path: () => module('none.js', 'export const somethingElse = 1;\n'),
    code: 'EINVAL',
    problem: /exports no driver factory/,
  },
  {
    what: 'a factory without create()',
    path: () => module('shape.js', "export const driverFactory = { name: 'x', matches: () => true };\n"),
    code: 'EINVAL',
    problem: /its export "driverFactory" has no create\(device, config\) function/,
  },
  {
    what: 'a default export that is not an object',
    path: () => module('default.js', 'export default 42;\n'),
    code: 'EINVAL',
    problem: /its export "default" is number, not an object/,
  },
];

for (const c of cases) {
  test(`${c.what} as device.driver fails the start, naming the file and the problem`, async () => {
    const path = c.path();
    const err = await startRig({ config: { device: { driver: path } } }).then(
      async (rig) => {
        await rig.close();
        return null;
      },
      (e: Error & { code?: string; errno?: number }) => e,
    );
    assert.ok(err, 'the broker must not start');
    assert.equal(err.code, c.code);
    assert.equal(typeof err.errno, 'number');
    assert.ok(err.message.includes(path), `names the file: ${err.message}`);
    assert.match(err.message, c.problem);
  });
}

test('a driver module that matches no device fails the start rather than falling back to generic', async () => {
  const path = module(
    'other.js',
    "export default { name: 'other-device', matches: (d) => d.ids.vendor === 0x1234 && d.ids.device === 0x0001, create() { throw new Error('not reached'); } };\n",
  );
  const err = await startRig({ config: { device: { driver: path } } }).catch(
    (e: Error & { code?: string }) => e,
  );
  assert.ok(err instanceof Error, 'the broker must not start');
  assert.equal((err as { code?: string }).code, 'ENODEV');
  assert.match(
    err.message,
    /the configured driver 'other-device' does not match the device \(PCI ids [0-9a-f]{4}:[0-9a-f]{4}\)/,
  );
});

test('device.driver is read relative to the config file that names it', () => {
  const sub = join(dir, 'etc');
  const cfg = join(dir, 'broker.toml');
  writeFileSync(cfg, '[device]\ndriver = "./etc/mine.js"\n');
  assert.equal(loadConfig(cfg).driverModule, join(sub, 'mine.js'));
  writeFileSync(cfg, '[device]\ndriver = "/opt/drivers/mine.js"\n');
  assert.equal(loadConfig(cfg).driverModule, '/opt/drivers/mine.js');
});
