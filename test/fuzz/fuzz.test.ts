// The fuzz suite (issue 15): structure-aware hostile vfio-user frames (valid
// headers around hostile payloads, lying sizes, fds of the wrong kind or too
// many, commands out of order, slow and never-reading peers) against a
// simulator (as its owner), a broker's lease socket, and its admin socket
// (hostile JSON), while a well-behaved lease client keeps copying through the
// same broker and checking its data, and a well-behaved owner takes the
// simulator over between sessions. A crash is any target process dying or
// the good client failing. At the end the broker holds only the good lease
// and its descriptors are back to baseline.
//   FUZZ_FRAMES (default 1,000,000), FUZZ_SEED (random; printed — a failure replays from it), FUZZ_TARGETS.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { adminRequest } from '../../src/cli/admin.js';
import { connect } from '../../src/client/lease.js';
import { Sa1Queue } from '../../src/client/sa1-queue.js';
import { spawnSimulator } from '../../src/sim/host/child.js';
import { startBroker } from '../../src/util/processes.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { leaseAndCopy } from '../helpers/lease-copy.js';
import { preparedFds } from '../helpers/prepared-fds.js';
import { fdCount, fdDiff, fdTargets, rssBytes } from '../helpers/proc-stat.js';
import { countFrom, rng, seedFrom } from '../helpers/rng.js';
import { adminSession, type SessionResult, vfioUserSession } from './sessions.js';

const FRAMES = countFrom('FUZZ_FRAMES', 1_000_000);
const SEED = seedFrom('FUZZ_SEED');
/** FUZZ_TARGETS=sim,lease,admin (default all): narrows a replay to one target. */
const ONLY = (process.env.FUZZ_TARGETS ?? 'sim,lease,admin').split(',');
const RSS_BOUND = 128 * 2 ** 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Target {
  name: string;
  quota: number;
  frames: number;
  sessions: number;
  replies: number;
  cut: number;
  errors: Record<string, number>;
}

test(`fuzz: ${FRAMES} hostile frames; no target dies, the good client is served throughout`, {
  timeout: 24 * 3600_000,
}, async () => {
  console.log(`fuzz: seed ${SEED} (replay: FUZZ_SEED=${SEED}), ${FRAMES} frames`);
  const started = Date.now();
  const dir = mkdtempSync(join(tmpdir(), 'devlease-fuzz-'));
  const simA = await spawnSimulator({ socketPath: join(dir, 'sim-a.sock'), numQueues: 8 });
  const simB = await spawnSimulator({ socketPath: join(dir, 'sim-b.sock'), numQueues: 4 });
  const broker = await startBroker(`vfio-user:${simA.socketPath}`, ['--rundir', join(dir, 'run')], () => {});
  const admin = join(broker.dir, 'admin.sock');
  const leaseSocket = broker.sockets.queue!;
  const crashes: string[] = [];
  for (const [name, p] of [
    ['simulator (broker-owned)', simA.exited],
    ['simulator (fuzzed)', simB.exited],
    ['broker', broker.exited],
  ] as const)
    void (p as Promise<unknown>).then((how) => {
      if (!stopping) crashes.push(`${name} exited: ${JSON.stringify(how)}`);
    });
  let stopping = false;

  // The well-behaved client: one lease, a queue, a copy checked every few hundred ms.
  const good = await connect({ socket: leaseSocket, request: {} });
  const q = await Sa1Queue.create(good, { entries: 16 });
  const src = await good.dma.alloc(4096);
  const dst = await good.dma.alloc(4096);
  let goodChecks = 0;
  let ownerChecks = 0;
  const goodLoop = (async () => {
    for (let i = 1; !stopping && crashes.length === 0; i++) {
      try {
        src.u8.fill(i & 0xff);
        dst.u8.fill(0);
        const c = await q.copy(src.iova, dst.iova, 4096);
        if (c.status !== 'OK' || dst.u8.some((b) => b !== (i & 0xff)))
          throw new Error(`copy ${i} ended ${c.status} with wrong data`);
        const s = (await adminRequest(admin, { op: 'status' }, 60_000)) as { leases: number };
        if (typeof s.leases !== 'number') throw new Error('admin status without leases');
        goodChecks++;
      } catch (err) {
        crashes.push(`the good client failed: ${(err as Error).message}`);
      }
      await sleep(300);
    }
  })();

  await sleep(200);
  // The slice fds the broker holds prepared for its next grants come and go with the reclaims: left out.
  const brokerFds0 = fdCount(broker.pid) - (await preparedFds(admin));
  const brokerFdList0 = fdTargets(broker.pid);
  const rss0 = rssBytes(broker.pid);
  const targets: Target[] = [
    { name: 'sim', quota: Math.ceil(FRAMES * 0.4) },
    { name: 'lease', quota: Math.ceil(FRAMES * 0.4) },
    { name: 'admin', quota: Math.max(1, FRAMES - 2 * Math.ceil(FRAMES * 0.4)) },
  ].map((t) => ({
    ...t,
    quota: ONLY.includes(t.name) ? t.quota : 0,
    frames: 0,
    sessions: 0,
    replies: 0,
    cut: 0,
    errors: {},
  }));

  // A fresh well-behaved client gets a lease and copies through it: the good client's long-lived connection
  // cannot see a broker that stopped admitting new ones (an admission slot leaked by each hostile session).
  let freshChecks = 0;
  const freshClient = async (when: string) => {
    try {
      await leaseAndCopy(leaseSocket);
      freshChecks++;
    } catch (err) {
      crashes.push(`a fresh client ${when} was not served: ${(err as Error).message}`);
    }
  };

  const run = async (t: Target, index: number) => {
    let lastFresh = Date.now();
    const r = rng((SEED ^ (index * 0x9e3779b9)) >>> 0);
    let lastReport = Date.now();
    while (t.frames < t.quota && crashes.length === 0) {
      const sr = rng(r.int(0, 0xffffffff));
      const maxFrames = t.quota - t.frames;
      let res: SessionResult;
      try {
        if (t.name === 'admin')
          res = await adminSession(sr, admin, { maxFrames, protectedIds: [good.info.lease] });
        else if (t.name === 'lease')
          res = await vfioUserSession(sr, leaseSocket, {
            allowReset: true,
            maxFrames,
            version: { capabilities: { devlease: { request: {} } } },
          });
        else res = await vfioUserSession(sr, simB.socketPath, { allowReset: true, maxFrames, version: {} });
      } catch (err) {
        const code = (err as { code?: string }).code ?? (err as Error).message;
        t.errors[code] = (t.errors[code] ?? 0) + 1;
        await sleep(20);
        continue;
      }
      t.sessions++;
      t.frames += res.frames;
      t.replies += res.replies;
      if (res.cut) t.cut++;
      // A lease session that sent VERSION must be answered or cut off: one left hanging is a broker not serving.
      if (t.name === 'lease' && res.unanswered)
        crashes.push('a lease session got no reply to VERSION and no close');
      if (t.name === 'lease' && Date.now() - lastFresh > 2_000) {
        lastFresh = Date.now();
        await freshClient(`after ${t.sessions} lease sessions`);
      }
      if (t.name === 'sim') {
        // A well-behaved owner is served after the hostile one left.
        try {
          const c = await VfioUserClient.connect(simB.socketPath);
          try {
            if ((await c.deviceInfo()).num_regions < 9) throw new Error('too few regions');
          } finally {
            c.close();
          }
          ownerChecks++;
        } catch (err) {
          crashes.push(`a well-behaved owner of the fuzzed simulator failed: ${(err as Error).message}`);
        }
      }
      if (Date.now() - lastReport > 30_000) {
        lastReport = Date.now();
        console.log(`fuzz: ${t.name} ${t.frames}/${t.quota} frames, ${t.sessions} sessions`);
      }
    }
  };

  try {
    await Promise.all(targets.map(run));
    if (ONLY.includes('lease')) await freshClient('at the end');
    stopping = true;
    await goodLoop;
    // Only the good lease left; descriptors back (connections of the fuzzer closed and noticed; the
    // admin connection asking for the leases too: fds are counted after it is gone).
    const leases = async () => ((await adminRequest(admin, { op: 'leases' }, 60_000)) as unknown[]).length;
    let end = Date.now() + 60_000;
    while ((await leases()) !== 1 && Date.now() < end) await sleep(100);
    assert.equal(await leases(), 1, 'only the good lease is left');
    // Stable now that only the good lease is left (no reclaim runs); read before the wait, whose count it was
    // asked through must see that admin connection closed too.
    const prepared = await preparedFds(admin);
    end = Date.now() + 60_000;
    while (fdCount(broker.pid) - prepared !== brokerFds0 && Date.now() < end) await sleep(100);
    assert.equal(
      fdCount(broker.pid) - prepared,
      brokerFds0,
      `the broker holds the descriptors it held before: ${fdDiff(brokerFdList0, fdTargets(broker.pid))}`,
    );
    const grown = rssBytes(broker.pid) - rss0;
    console.log(`fuzz: broker RSS grew ${(grown / 2 ** 20).toFixed(1)} MiB`);
    assert.ok(grown < RSS_BOUND, `broker RSS grew ${grown} bytes (bound ${RSS_BOUND})`);
  } finally {
    stopping = true;
    const total = targets.reduce((n, t) => n + t.frames, 0);
    console.log(
      `fuzz: ${total} frames (${targets
        .map(
          (t) =>
            `${t.name} ${t.frames} in ${t.sessions} sessions, ${t.replies} replies, ${t.cut} cut off` +
            (Object.keys(t.errors).length ? `, errors ${JSON.stringify(t.errors)}` : ''),
        )
        .join(
          '; ',
        )}), ${crashes.length} crashes, ${goodChecks} good-client checks, ${ownerChecks} good-owner checks, ${freshChecks} fresh-client checks, ` +
        `${((Date.now() - started) / 1000).toFixed(0)} s, seed ${SEED}`,
    );
    good.close();
    await broker.stop();
    await simA.close();
    await simB.close();
    rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(crashes, [], `no crash (replay: FUZZ_SEED=${SEED})`);
});
