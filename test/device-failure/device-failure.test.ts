// The device-failure suite (npm run test:device-failure; CI runs one round):
// hang, frozen device (SIGSTOP), hang during recovery, concurrent resets and
// the device process killed, each `rounds` times against a real simulator
// process and the broker with its default settings. Every round checks the
// client was told and its lease ended, and that a new lease works after;
// detection and recovery times are printed per round and summed up at the
// end (measured, never asserted). Rounds: DEVLEASE_DEVICE_FAILURE_ROUNDS
// (default 3).
import assert from 'node:assert/strict';
import { after, afterEach, test } from 'node:test';
import { type Rig, startRig } from '../helpers/broker-rig.js';
import {
  concurrentResets,
  type FailureTimes,
  frozen,
  hang,
  hangDuringRecovery,
  processKilled,
} from '../helpers/device-failure.js';
import { trackFdLeaks } from '../helpers/fds.js';

const ROUNDS = Number(process.env.DEVLEASE_DEVICE_FAILURE_ROUNDS ?? 3);
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) {
  throw new Error(
    `DEVLEASE_DEVICE_FAILURE_ROUNDS must be an integer >= 1, got ${process.env.DEVLEASE_DEVICE_FAILURE_ROUNDS}`,
  );
}
const QUEUES = 2;

const leakCheck = trackFdLeaks();
const results = new Map<string, FailureTimes[]>();
after(async () => {
  const ms = (v: number) => `${v.toFixed(0)} ms`;
  const stat = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return `min ${ms(s[0]!)}, median ${ms(s[Math.floor(s.length / 2)]!)}, max ${ms(s[s.length - 1]!)}`;
  };
  console.log(`device-failure summary (${ROUNDS} round(s) each):`);
  for (const [name, ts] of results) {
    console.log(
      `  ${name.padEnd(22)} detect: ${stat(ts.map((t) => t.detectMs))}; recover: ${stat(ts.map((t) => t.recoverMs))}`,
    );
  }
  await leakCheck();
});

let rig: Rig | null = null;
afterEach(async () => {
  await rig?.close();
  rig = null;
});

async function rounds(name: string, what: string, run: (r: Rig) => Promise<FailureTimes>): Promise<void> {
  rig = await startRig({ sim: { numQueues: QUEUES } });
  const ts: FailureTimes[] = [];
  results.set(name, ts);
  for (let i = 1; i <= ROUNDS; i++) {
    const t = await run(rig);
    ts.push(t);
    console.log(
      `device-failure: ${name} round ${i}: detected in ${t.detectMs.toFixed(0)} ms, ${what} ${t.recoverMs.toFixed(0)} ms`,
    );
  }
}

test('hang: detected by the heartbeat, leases reclaimed, recovered, leasing again', () =>
  rounds('hang', 'leasing again after', (r) => hang(r)));

test('frozen device (SIGSTOP): unresponsive, leases ended, reconnected after SIGCONT', () =>
  rounds('frozen (SIGSTOP 3 s)', 'leasing again after SIGCONT in', async (r) => {
    const t = await frozen(r, 3000);
    // Refused at once with the reason while frozen: a client is told the device is gone, not left to time out.
    assert.equal(
      t.refusedCode,
      'ENODEV',
      'a lease asked for while the device is frozen is refused with ENODEV',
    );
    return t;
  }));

test('hang during recovery: three firmware loads hang, the recovery goes on until the device is back', () =>
  rounds('hang during recovery', 'leasing again after', (r) => hangDuringRecovery(r, 3)));

test('concurrent resets: three devlease reset at once, one recovery, all answered', () =>
  rounds('concurrent resets', 'leasing again after', (r) => concurrentResets(r, 3)));

test('device process killed (SIGKILL): lost, leases ended, reconnected when it is started again', () =>
  rounds('process killed', 'leasing again after restart in', (r) => processKilled(r, QUEUES)));
