// An admin client that pipelines requests and never reads its replies costs
// the broker a bounded amount (issue 15 item 1: 20,000 unread requests once
// grew the daemon by 270 MB): the admin socket stops reading a connection
// whose replies are not drained, another admin client is served meanwhile,
// and the first gets every reply, in order, once it reads again.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ADMIN_MAX_PENDING, ADMIN_REPLY_HIGH_WATER } from '../../src/broker/admin.js';
import { type ChildSimulator, spawnSimulator } from '../../src/sim/host/child.js';
import { type SeqpacketMessage, SeqpacketSocket } from '../../src/sys/index.js';
import { DEVLEASE_BIN, startBroker } from '../../src/util/processes.js';
import { until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { rssBytes } from '../helpers/proc-stat.js';

const leakCheck = trackFdLeaks();
let dir: string;
let sim: ChildSimulator;
let broker: Awaited<ReturnType<typeof startBroker>>;
let admin: string;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'devlease-admin-fc-'));
  sim = await spawnSimulator({ socketPath: join(dir, 'sim.sock'), numQueues: 4 });
  broker = await startBroker(`vfio-user:${sim.socketPath}`, ['--rundir', join(dir, 'run')], () => {});
  admin = join(broker.dir, 'admin.sock');
});
after(async () => {
  await broker?.stop();
  await sim?.close();
  rmSync(dir, { recursive: true, force: true });
  await leakCheck();
});

const N = 20_000;
/** Growth of the daemon's RSS allowed while the client reads nothing: the backlog bound plus room for GC. */
const RSS_BOUND = 48 * 1024 * 1024;

test('a never-reading admin client is paused; the broker stays bounded; others are served; replies all come', {
  timeout: 180_000,
}, async () => {
  const rss0 = rssBytes(broker.pid);
  const bad = SeqpacketSocket.connect(admin); // no 'message' listener: it reads nothing
  const req = Buffer.from(JSON.stringify({ op: 'status' }));
  for (let i = 0; i < N; i++) bad.send(req);
  // The broker stops reading: most requests stay queued in this (the client's) process.
  let last = -1;
  for (let stable = 0; stable < 20; ) {
    await new Promise((r) => setTimeout(r, 50));
    stable = bad.queued === last ? stable + 1 : 0;
    last = bad.queued;
  }
  assert.ok(bad.queued > N / 2, `the broker stopped reading: ${bad.queued} of ${N} requests still unsent`);
  const grown = rssBytes(broker.pid) - rss0;
  assert.ok(
    grown < RSS_BOUND,
    `broker RSS grew ${(grown / 2 ** 20).toFixed(1)} MiB (bound ${RSS_BOUND / 2 ** 20} MiB; reply backlog ` +
      `bound ${ADMIN_REPLY_HIGH_WATER} B + ${ADMIN_MAX_PENDING} replies)`,
  );

  // A second admin client is served meanwhile.
  const r = spawnSync(process.execPath, [DEVLEASE_BIN, 'status', '--json', '--admin', admin], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).transport, 'vfio-user');

  // Reading again, the first client gets a reply to every request.
  let got = 0;
  let bad0: unknown = null;
  bad.on('message', (m: SeqpacketMessage) => {
    const reply = JSON.parse(m.data.toString('utf8'));
    if (reply.ok !== true && bad0 === null) bad0 = reply;
    got++;
  });
  await until(`${N} replies (got ${got})`, () => got === N, 120_000);
  assert.equal(bad0, null, 'every reply is ok');
  bad.close();
});
