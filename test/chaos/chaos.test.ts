// The chaos suite (issue 15): real client processes, using the devlease client
// library, SIGKILLed at random points of their lifecycle, several at a time —
// while connecting and negotiating, during DMA alloc/map churn, during queue
// work, while a revoke with a deadline runs, and while the device recovers
// (an admin reset issued at a random moment of a batch). After every batch
// and at the end the broker (a `devlease daemon` process) and the simulator
// are back to baseline: no leases, the same descriptors and memfd mappings in
// both, the broker's RSS within a bound, no stray processes; and a
// well-behaved client still leases and copies. Victims are C processes on
// libdevlease (a kill costs milliseconds) and, a share of them, Node processes
// on the TypeScript client (victims.ts).
//   CHAOS_KILLS (default 10,000), CHAOS_PARALLEL (6), CHAOS_BATCH (100), CHAOS_SEED (random; printed),
//   CHAOS_NODE_SHARE (0.1: the share of Node victims, 0..1).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { adminRequest } from '../../src/cli/admin.js';
import { spawnSimulator } from '../../src/sim/host/child.js';
import { startBroker } from '../../src/util/processes.js';
import { ClientProc } from '../helpers/broker-rig.js';
import { countFrom, type Rng, rng, seedFrom } from '../helpers/rng.js';
import { backToBaseline, rss, type Snapshot, snapshot } from './baseline.js';
import { cVictim, type Mark, spawnVictim, type VictimKind } from './victims.js';

const KILLS = countFrom('CHAOS_KILLS', 10_000);
const PARALLEL = countFrom('CHAOS_PARALLEL', 6);
const BATCH = countFrom('CHAOS_BATCH', 100);
const SEED = seedFrom('CHAOS_SEED');
/** Broker RSS growth over the warmed-up baseline that counts as a leak. */
const RSS_BOUND = 96 * 2 ** 20;
const NODE_SHARE = Number(process.env.CHAOS_NODE_SHARE ?? '0.1');
const PHASES = ['connect', 'dma', 'queue', 'revoke'] as const;
/**
 * What a victim may be told away from a reset (near one, anything: its queue's work errors EIO, its waits time
 * out): ECONNRESET (its session ended: a revoke's deadline, a recovery's reclaim), EAGAIN (the broker suspended
 * for a recovery: lease again later), ENODEV (a lease's call while the device is being reset under it), EFAULT
 * (the C victim's queue page faulted, revoked, and a notice confirmed the lease ended:
 * clients/c/tests/chaos-victim.c), ENOSPC (all 8 queues leased for a moment: the live victims' and those of killed
 * victims still being reclaimed; queues that never come back show as stalls and as leaks). Anything else — EPROTO, EINVAL, EMFILE, a code of 'none' — is a defect the
 * kills exposed.
 */
const CLIENT_ERRORS = new Set(['ECONNRESET', 'EAGAIN', 'ENODEV', 'EFAULT', 'ENOSPC']);
type Phase = (typeof PHASES)[number];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Tally {
  kills: number;
  byPhase: Record<string, number>;
  byKind: Record<string, number>;
  duringRecovery: number;
  resets: number;
  resetFailures: string[];
  revokes: number;
  /** Admin revokes refused for another reason than the lease being gone already (ENOENT). */
  revokeFailures: string[];
  clientErrors: Record<string, number>;
  /** Client errors with a code a victim should never see (not in CLIENT_ERRORS), with their messages. */
  unexpectedErrors: string[];
  /** Victims that never reached their phase's mark in 30 s, outside a recovery. */
  stalls: string[];
  unexpectedExits: string[];
  leaks: string[];
  maxRssGrowth: number;
}

test(`chaos: ${KILLS} clients SIGKILLed at random points; everything back to baseline`, {
  timeout: 24 * 3600_000,
}, async () => {
  assert.ok(
    NODE_SHARE >= 0 && NODE_SHARE <= 1,
    `CHAOS_NODE_SHARE must be in [0, 1], got ${process.env.CHAOS_NODE_SHARE}`,
  );
  cVictim(); // built before the clock starts (make, once); names a missing compiler or json-c
  console.log(
    `chaos: seed ${SEED} (replay: CHAOS_SEED=${SEED}), ${KILLS} kills, ${PARALLEL} at a time, batches of ${BATCH}, ` +
      `${Math.round(NODE_SHARE * 100)}% Node victims`,
  );
  const started = Date.now();
  const r = rng(SEED);
  const dir = mkdtempSync(join(tmpdir(), 'devlease-chaos-'));
  const sim = await spawnSimulator({ socketPath: join(dir, 'sim.sock'), numQueues: 8 });
  const broker = await startBroker(`vfio-user:${sim.socketPath}`, ['--rundir', join(dir, 'run')], () => {});
  const admin = join(broker.dir, 'admin.sock');
  const socket = broker.sockets.queue!;
  const t: Tally = {
    kills: 0,
    byPhase: {},
    byKind: {},
    duringRecovery: 0,
    resets: 0,
    resetFailures: [],
    revokes: 0,
    revokeFailures: [],
    clientErrors: {},
    unexpectedErrors: [],
    stalls: [],
    unexpectedExits: [],
    leaks: [],
    maxRssGrowth: 0,
  };
  let resetting = false;
  /** Resets started so far, and when the last one ended: a victim's wait or error near one is the reset's doing. */
  let resetsStarted = 0;
  let lastResetEnd = 0;
  /** A reset runs, or ended less than 5 s ago (a C victim then sees EIO or ETIMEDOUT from its queue, too). */
  const nearReset = () => resetting || Date.now() - lastResetEnd < 5000;
  /** Victims alive now, each with a way to be killed at once (the resetter kills some mid-recovery). */
  const live = new Set<() => void>();

  /** One victim: spawned, aimed at its phase, SIGKILLed. */
  const victim = async (vr: Rng): Promise<void> => {
    const phase: Phase = vr.pick(PHASES);
    const kind: VictimKind = vr.chance(NODE_SHARE) ? 'node' : 'c';
    const marks: Mark[] = [];
    const waiters: (() => void)[] = [];
    const { child, stderr } = spawnVictim(
      kind,
      { socket, phase, seed: vr.int(0, 2 ** 31), comply: vr.chance(0.5) },
      (msg) => {
        marks.push(msg);
        if (msg.m === 'error') {
          t.clientErrors[msg.code!] = (t.clientErrors[msg.code!] ?? 0) + 1;
          if (!CLIENT_ERRORS.has(msg.code!) && !nearReset() && t.unexpectedErrors.length < 20)
            t.unexpectedErrors.push(`${kind} ${phase}: ${msg.code} ${msg.message ?? ''}`);
        }
        for (const w of waiters.splice(0)) w();
      },
    );
    let killed = false;
    const resetsAtStart = resetsStarted;
    const exited = new Promise<void>((resolve) =>
      child.once('exit', (code, sig) => {
        if (!killed)
          t.unexpectedExits.push(
            `${kind} ${phase} client exited by itself (${code ?? sig}): ${stderr().trim()}`,
          );
        resolve();
      }),
    );
    let killNow!: () => void;
    const now = new Promise<void>((res) => {
      killNow = res;
    });
    live.add(killNow);
    const want = phase === 'connect' ? 'start' : 'working';
    const end = Date.now() + 30_000;
    let mark: Mark | undefined;
    let killedEarly = false;
    void now.then(() => {
      killedEarly = true;
    });
    for (;;) {
      mark = marks.find((x) => x.m === want);
      if (mark || killedEarly || Date.now() > end || child.exitCode !== null) break;
      await Promise.race([new Promise<void>((res) => waiters.push(res)), sleep(250), exited, now]);
    }
    let aim = mark ? phase : 'stalled';
    if (killedEarly) {
      // picked by the resetter: killed at once, mid-recovery
    } else if (phase === 'connect') await Promise.race([sleep(vr.int(0, 60)), now]);
    else if (phase === 'revoke' && mark?.lease) {
      const deadlineMs = vr.int(10, 300);
      await adminRequest(admin, { op: 'revoke', id: mark.lease, deadlineMs }, 60_000).then(
        () => t.revokes++,
        (err: Error & { code?: string }) => {
          // ENOENT: already gone (a recovery reclaimed it, or the victim's lifecycle ended it): still a kill in
          // this phase. Anything else is the broker refusing a revoke it should take.
          if (err.code !== 'ENOENT') t.revokeFailures.push(`${mark?.lease}: ${err.code} ${err.message}`);
        },
      );
      await Promise.race([sleep(vr.int(0, deadlineMs + 100)), now]);
    } else await Promise.race([sleep(vr.int(0, 150)), now]);
    live.delete(killNow);
    if (resetting) {
      aim = 'recovery';
      t.duringRecovery++;
    } else if (
      aim === 'stalled' &&
      !killedEarly &&
      resetsStarted === resetsAtStart &&
      !nearReset() &&
      child.exitCode === null &&
      child.signalCode === null &&
      t.stalls.length < 20
    ) {
      // Still alive, and no reset ran while it waited (nor ended just before): a client that got no lease or
      // could not work for 30 s — what a broker refusing or losing clients looks like.
      t.stalls.push(
        `${kind} ${phase}: no '${want}' mark in 30 s; marks ${JSON.stringify(marks.slice(-5))}; ${stderr().trim().slice(0, 300)}`,
      );
    }
    killed = true;
    child.kill('SIGKILL');
    await exited;
    t.kills++;
    t.byPhase[aim] = (t.byPhase[aim] ?? 0) + 1;
    t.byKind[kind] = (t.byKind[kind] ?? 0) + 1;
  };

  const take = () => snapshot(broker.pid, sim.pid, admin);
  try {
    // Warm up (first lease, first reset) before the baseline: lazily made things are then made.
    await victim(rng(1));
    await adminRequest(admin, { op: 'reset' }, 60_000);
    t.kills = 0;
    t.byPhase = {};
    t.byKind = {};
    await sleep(500);
    const base: Snapshot = await take();
    const t0 = Date.now();
    const rss0 = rss(broker.pid);
    console.log(`chaos: baseline ${JSON.stringify({ ...base, brokerRss: rss0 })}`);

    let started_ = 0;
    for (let batch = 0; started_ < KILLS; batch++) {
      const batchEnd = Math.min(KILLS, started_ + BATCH);
      const br = rng(r.int(0, 2 ** 31));
      let resetter: Promise<void> = Promise.resolve();
      if (br.chance(0.5)) {
        const at = br.int(0, 1500);
        resetter = sleep(at).then(async () => {
          resetting = true;
          resetsStarted++;
          t.resets++;
          const done = adminRequest(admin, { op: 'reset' }, 120_000).catch((err: Error) => {
            t.resetFailures.push(err.message);
          });
          // Some victims die while the device recovers (their leases being reclaimed by it).
          await sleep(br.int(0, 20));
          for (const k of [...live].slice(0, br.int(1, PARALLEL))) k();
          await done;
          resetting = false;
          lastResetEnd = Date.now();
        });
      }
      const slots = Array.from({ length: PARALLEL }, async () => {
        while (started_ < batchEnd) {
          started_++;
          await victim(rng(br.int(0, 2 ** 31)));
        }
      });
      await Promise.all(slots);
      await resetter;
      const diff = await backToBaseline(base, take, 60_000);
      if (diff !== null)
        t.leaks.push(`after batch ${batch}: ${JSON.stringify(diff)} vs ${JSON.stringify(base)}`);
      t.maxRssGrowth = Math.max(t.maxRssGrowth, rss(broker.pid) - rss0);
      if ((batch + 1) % 5 === 0 || started_ >= KILLS)
        console.log(
          `chaos: ${t.kills} kills, ${t.resets} resets, ${t.leaks.length} leaks, ${((Date.now() - started) / 1000).toFixed(0)} s ` +
            `(${((t.kills * 1000) / (Date.now() - t0)).toFixed(2)} kills/s)`,
        );
      if (diff !== null) break; // a leak: stop here, with its snapshot
    }

    // The device still serves a well-behaved client.
    const c = await ClientProc.spawn();
    await c.call('connect', { socket });
    const iova = BigInt((await c.call<{ iova: string }>('alloc', { name: 'b', size: 4096 })).iova);
    const src = BigInt((await c.call<{ iova: string }>('alloc', { name: 's', size: 4096 })).iova);
    await c.call('fill', { name: 's', value: 0xa5, length: 4096 });
    await c.call('queue');
    const done = await c.call<{ status: string }>('submit', {
      desc: { opcode: 'COPY', src: `${src}`, dst: `${iova}`, length: 4096 },
    });
    assert.equal(done.status, 'OK', `a copy after the chaos: ${JSON.stringify(done)}`);
    assert.deepEqual(await c.call('readBuf', { name: 'b', length: 4 }), [0xa5, 0xa5, 0xa5, 0xa5]);
    await c.exit();
  } finally {
    const secs = (Date.now() - started) / 1000;
    console.log(
      `chaos: ${t.kills} kills (${Object.entries(t.byPhase)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')}; ${Object.entries(t.byKind)
        .map(([k, v]) => `${k} ${v}`)
        .join(
          ', ',
        )}; ${t.duringRecovery} during a recovery), ${t.resets} resets (${t.resetFailures.length} failed), ` +
        `${t.revokes} revokes with a deadline (${t.revokeFailures.length} refused), ${t.stalls.length} stalled, client errors ${JSON.stringify(t.clientErrors)}, ` +
        `${t.leaks.length} leaks, ${t.unexpectedExits.length} unexpected exits, ` +
        `max broker RSS growth ${(t.maxRssGrowth / 2 ** 20).toFixed(1)} MiB, ${secs.toFixed(0)} s, seed ${SEED}`,
    );
    await broker.stop();
    await sim.close();
    rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(t.leaks, [], 'every batch back to baseline');
  assert.deepEqual(t.unexpectedExits, [], 'no client died but by SIGKILL');
  assert.deepEqual(t.resetFailures, [], 'every reset recovered the device');
  assert.deepEqual(t.stalls, [], 'every victim reached its phase (a lease, its work) unless a reset ran');
  assert.deepEqual(t.revokeFailures, [], 'every revoke of a live lease was taken');
  assert.deepEqual(t.unexpectedErrors, [], `victims saw only ${[...CLIENT_ERRORS].join(', ')}`);
  // Kills that hit what they aimed at: every phase was reached and killed in, not only stalls and recoveries.
  if (KILLS >= 40)
    for (const p of PHASES) assert.ok((t.byPhase[p] ?? 0) > 0, `no victim was killed in its '${p}' phase`);
  assert.ok(t.maxRssGrowth < RSS_BOUND, `broker RSS growth ${t.maxRssGrowth} < ${RSS_BOUND}`);
});
