// A device that stops answering is a hung device (issue 15 item 5): with the
// simulator process frozen (SIGSTOP), the broker's HEARTBEAT read goes
// unanswered; past sa1.response_timeout_ms the device is unresponsive, the
// client is told and its lease ends without the device, new leases are
// refused at once (ENODEV, with the reason) instead of after timeouts, and
// once the process runs again (SIGCONT) the broker reconnects and leases work.
import assert from 'node:assert/strict';
import { after, afterEach, test } from 'node:test';
import { type Rig, startRig } from '../helpers/broker-rig.js';
import { frozen } from '../helpers/device-failure.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

let rig: Rig | null = null;
afterEach(async () => {
  await rig?.close();
  rig = null;
});

test('a frozen simulator (SIGSTOP) is detected, its lease ended and refused at once; SIGCONT brings it back', async () => {
  rig = await startRig({
    sim: { numQueues: 2 },
    config: { sa1: { heartbeat_ms: 50, response_timeout_ms: 1000 } },
  });
  const t = await frozen(rig, 3000);
  console.log(
    `frozen device: detected in ${t.detectMs.toFixed(0)} ms, back ${t.recoverMs.toFixed(0)} ms after SIGCONT`,
  );
  assert.equal(t.refusedCode, 'ENODEV', 'a lease asked for while the device is frozen is refused at once');
  const unresponsive = rig.audit.find((e) => e.event === 'device-unresponsive');
  assert.match(unresponsive?.reason ?? '', /has not answered a HEARTBEAT read for \d+ ms/);
  assert.ok(
    rig.audit.some((e) => e.event === 'device-gone'),
    'the connection was dropped',
  );
  assert.equal(rig.broker.deviceConnection().state, 'up');
});
