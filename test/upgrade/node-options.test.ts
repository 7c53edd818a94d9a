// An upgraded broker runs with the Node options its predecessor was started
// with (a heap size, a preloaded agent), on its command line and in
// NODE_OPTIONS, less those that would hold it up or change what it is
// (src/broker/handover/node-options.ts): the new broker's command line and
// environment are read from /proc, and the preloaded module records each
// process it runs in.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { until } from '../interop/helpers/peers.js';
import { alive, UpgradeRig } from './rig.js';

after(trackFdLeaks());

/** A process's command line, or its environment, as its elements. */
function procList(pid: number, file: 'cmdline' | 'environ'): string[] {
  return readFileSync(`/proc/${pid}/${file}`, 'utf8').split('\0').slice(0, -1);
}

test('an upgraded broker keeps its Node options, and drops the inspector', { timeout: 180_000 }, async () => {
  assert.ok(
    process.features.inspector,
    'this Node has no inspector: the first broker is started with --inspect',
  );
  // The preloaded module and what it writes, in a folder of their own (the rig makes its folder when it starts).
  const dir = mkdtempSync(join(tmpdir(), 'devlease-node-options-'));
  let rig: UpgradeRig | null = null;
  try {
    const preload = join(dir, 'agent.cjs');
    const marks = join(dir, 'pids');
    writeFileSync(
      preload,
      `require('node:fs').appendFileSync(${JSON.stringify(marks)}, process.pid + '\\n');\n`,
    );
    const kept = ['--min-semi-space-size=2', '--require', preload];
    rig = await UpgradeRig.start(
      // In NODE_OPTIONS too: a heap limit the new broker keeps, and an inspector port it does not.
      { NODE_OPTIONS: '--max-old-space-size=300 --inspect-port 0' },
      // The inspector on 127.0.0.1, on a port of the kernel's choosing (a local debugger could attach to the
      // first broker while the test runs), and a second port option with its value apart: both the old
      // broker's alone.
      { nodeArgs: ['--inspect=127.0.0.1:0', kept[0]!, '--inspect-port', '0', kept[1]!, kept[2]!] },
    );
    await rig.addClient();
    const old = await rig.brokerPid();
    assert.ok(
      procList(old, 'cmdline').includes('--inspect=127.0.0.1:0'),
      'the first broker runs with the inspector',
    );
    const r = await rig.request({ op: 'upgrade' });
    assert.equal(r.upgraded, true);
    const pid = await rig.brokerPid();
    assert.notEqual(pid, old);
    const argv = procList(pid, 'cmdline');
    const script = argv.indexOf(DEVLEASE_BIN);
    assert.ok(script > 0, `the new broker runs ${DEVLEASE_BIN}: ${JSON.stringify(argv)}`);
    assert.deepEqual(argv.slice(1, script), kept, 'the Node options before the script');
    assert.deepEqual(argv.slice(script + 1, script + 4), ['daemon', '--handover-fd', '3']);
    assert.deepEqual(
      procList(pid, 'environ').filter((e) => e.startsWith('NODE_OPTIONS=')),
      ['NODE_OPTIONS=--max-old-space-size=300'],
    );
    assert.deepEqual(
      readFileSync(marks, 'utf8').trim().split('\n').map(Number),
      [old, pid],
      'the preloaded module ran in both brokers',
    );
    const audit = (await rig.request({ op: 'audit' })) as Record<string, unknown>[];
    const start = audit.find((e) => e.event === 'upgrade-start');
    assert.deepEqual(start?.['nodeOptions'], kept);
    assert.equal(start?.['nodeOptionsEnv'], '--max-old-space-size=300');
    await until('the old broker to exit', () => !alive(old), 30_000);
    await rig.progress(10);
    const [stats] = await rig.stopClients();
    assert.deepEqual(stats!.errors, []);
    assert.equal(stats!.disconnects, 0);
  } finally {
    await rig?.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
