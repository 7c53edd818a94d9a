// Behaviour check (not a speed check): sockets that are watched but idle cost no CPU -- readiness comes from
// epoll, nothing polls. Shown without a clock: the idle process has no timeout, interval or immediate scheduled
// from JavaScript (ref'd or not) and armed none since it became idle, yet a message sent to one of its sockets is
// delivered (the watch, not a timer, woke it).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

const FIXTURE = fileURLToPath(new URL('../fixtures/sys/idle-sockets.js', import.meta.url));

interface Report {
  live: string[];
  armedSinceReady: number;
  resources: string[];
}

test('a process with 100 watched idle sockets schedules nothing to poll them (idle costs no CPU)', async () => {
  const child = spawn(process.execPath, [FIXTURE, '100'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = once(child, 'exit');
  let out = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    out += chunk;
  });
  const reports = () =>
    out
      .split('\n')
      .filter((l) => l.startsWith('report '))
      .map((l) => JSON.parse(l.slice(7)) as Report);
  const idle = (r: Report | undefined, when: string) => {
    assert.ok(r, `a report ${when}`);
    assert.deepEqual(r.live, [], `nothing scheduled ${when}`);
    assert.equal(r.armedSinceReady, 0, `no timer or immediate armed since ready, ${when}`);
    assert.deepEqual(
      r.resources.filter((k) => k === 'Timeout' || k === 'Immediate'),
      [],
      `the loop holds no timer ${when}`,
    );
  };
  try {
    await until('the fixture to connect its sockets', () => {
      if (child.exitCode !== null) throw new Error(`idle fixture exited early (${child.exitCode})`);
      return out.includes('ready');
    });
    child.stdin.write('report\n');
    await until('the first report', () => reports().length === 1);
    idle(reports()[0], 'when idle');
    // The sockets are watched: a message is delivered, by readiness alone.
    child.stdin.write('ping\n');
    await until('the message to be delivered', () => out.includes('message ping'));
    child.stdin.write('report\n');
    await until('the second report', () => reports().length === 2);
    idle(reports()[1], 'after a delivery');
  } finally {
    child.stdin.end();
    const [code, signal] = await exited;
    assert.equal(code, 0, `idle fixture exit: ${code ?? signal}`);
  }
});
