// libdevlease against a broker that lists faults without counting them (no faultsTotal in its info: one from
// before the count; test/helpers/fake-lease-broker.ts): faults_total is then the list's length, so
// devlease_next_notice reports each new record once, and an ERR with no new record is a reset.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { until } from '../helpers/broker-rig.js';
import { uncountingBroker } from '../helpers/fake-lease-broker.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { buildClib, sanitizerEnv, sanitizerFindings } from './build.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

let bin: string;
before(() => {
  bin = buildClib();
});

test('a broker that does not count faults: the new records of its list reach the C client, then a reset', async () => {
  const broker = uncountingBroker();
  const child = spawn(join(bin, 'clib-probe'), ['notices', broker.socket], { env: sanitizerEnv });
  try {
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    await until('the C client to lease', () => out.includes('leased queue-9'), 10_000);
    broker.list(2);
    await until('the first two faults', () => out.includes('address 0x2000\n'), 10_000);
    broker.list(3);
    await until('the third fault', () => out.includes('address 0x3000\n'), 10_000);
    broker.list(3);
    await until('the reset', () => out.includes('notice reset\n'), 10_000);
    broker.close(); // the session ends: the probe sees it and exits
    const code = await exited;
    assert.equal(sanitizerFindings(err), null);
    assert.equal(code, 0, `${out}\n${err}`);
    assert.equal(
      out,
      [
        'ok connect',
        'leased queue-9 queue 0',
        'notice fault',
        'fault WINDOW_VIOLATION code 3 queue 0 address 0x1000',
        'fault WINDOW_VIOLATION code 3 queue 0 address 0x2000',
        'notice fault',
        'fault WINDOW_VIOLATION code 3 queue 0 address 0x3000',
        'notice reset',
        'notice disconnected',
        '',
      ].join('\n'),
      'each fault reported once, in order; the unchanged list a reset',
    );
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    broker.close();
  }
});
