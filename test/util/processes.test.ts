// The broker daemon devlease starts itself runs with BROKER_NODE_FLAGS (docs/CONFIG.md "Node flags for the
// daemon"): the demo's broker and the tests' collect their heap on the main thread alone.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { type ChildSimulator, spawnSimulator } from '../../src/sim/host/child.js';
import { BROKER_NODE_FLAGS, startBroker } from '../../src/util/processes.js';

const dir = mkdtempSync(join(tmpdir(), 'devlease-processes-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('startBroker runs the daemon with the broker node flags, and it starts with them', async () => {
  assert.deepEqual(BROKER_NODE_FLAGS, ['--single-threaded-gc']);
  let sim: ChildSimulator | null = null;
  let broker: Awaited<ReturnType<typeof startBroker>> | null = null;
  try {
    sim = await spawnSimulator({ socketPath: join(dir, 'sim.sock'), numQueues: 1 });
    broker = await startBroker(`vfio-user:${sim.socketPath}`, ['--rundir', join(dir, 'run')], () => {});
    // argv as the kernel has it: node, the flags, bin/devlease.js, daemon ...
    const argv = readFileSync(`/proc/${broker.pid}/cmdline`, 'utf8').split('\0');
    const bin = argv.findIndex((a) => a.endsWith('devlease.js'));
    assert.ok(bin > 0, `no devlease.js in ${argv.join(' ')}`);
    assert.deepEqual(argv.slice(1, bin), [...BROKER_NODE_FLAGS]);
    assert.equal(argv[bin + 1], 'daemon');
  } finally {
    assert.equal(await broker?.stop(), 0);
    await sim?.close();
  }
});
