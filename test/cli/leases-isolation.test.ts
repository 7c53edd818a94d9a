// `devlease leases` shows each lease's isolation levels: SA-1's queue page (a slice fd of its own) is
// `enforced`. (The kernel's `audited` slices are shown by the guest test, test/kernel/guest/ivshmem.test.ts.)
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { connect } from '../../src/client/index.js';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

function run(args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [DEVLEASE_BIN, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d) => {
      out += d;
    });
    const t = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`devlease ${args.join(' ')} did not finish in 60 s`));
    }, 60_000);
    p.on('close', (code) => {
      clearTimeout(t);
      resolve({ code, out });
    });
  });
}

test('devlease leases: an ISOLATION column, enforced for an SA-1 queue lease', async () => {
  const leak = trackFdLeaks();
  const rig = await startRig();
  try {
    const lease = await connect({ socket: rig.socket });
    try {
      const admin = join(rig.broker.dir, 'admin.sock');
      const human = await run(['leases', '--admin', admin]);
      assert.equal(human.code, 0);
      const [head, row] = human.out.trim().split('\n');
      assert.match(head ?? '', /ISOLATION/);
      assert.match(row ?? '', /queuePage=enforced/);
      const json = await run(['leases', '--admin', admin, '--json']);
      const rows = JSON.parse(json.out) as { isolation: Record<string, string> }[];
      assert.equal(rows[0]?.isolation.queuePage, 'enforced');
      assert.ok(Object.values(rows[0]!.isolation).every((l) => l === 'enforced' || l === 'cooperative'));
    } finally {
      lease.close();
    }
  } finally {
    await rig.close();
  }
  await leak();
});
