// The fail-nth suite (issue 15): the broker and a lease client run in this
// process, with the native layer's fail-nth hook installed (DEVLEASE_FAIL_NTH,
// src/sys/fail-nth.ts), so a walk fails in turn every syscall either side makes
// for one operation: a lease (connect, VERSION, info, region mappings, irq
// eventfds; the broker's accept, pidfd, slices), a DMA map and unmap, a revoke
// (admin request, the REQ notice, reclaim) with and without a deadline, and a
// reclaim when the client closes. The simulator is a child process and is
// not failed (it stands for the device). After every try: no uncaught
// exception, a clear error or success, and — once the client side has closed
// what it holds — this process's descriptors and memfd mappings, the
// simulator's descriptors and mappings, and the lease table back to baseline,
// and a fresh lease still copies.
//   DEVLEASE_FAIL_NTH_TRACE=1 prints where each failed call was made.
//   FAIL_NTH_STRIDE (default 1: every site), FAIL_NTH_FROM (default 1: the
//   first n tried, to narrow a walk), FAIL_NTH_MAX (default 5000: the largest n tried), FAIL_NTH_OPS (default all: lease,map,unmap,revoke,revoke-deadline,reclaim).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { DmaBuffer } from '../../src/client/dma.js';
import type { Lease } from '../../src/client/lease.js';
import { fdCount, fdDiff, fdTargets, mappingCount } from '../helpers/proc-stat.js';
import { countFrom } from '../helpers/rng.js';
import { type Judge, type Operation, type WalkResult, walk } from './walk.js';

const STRIDE = countFrom('FAIL_NTH_STRIDE', 1);
const MAX = countFrom('FAIL_NTH_MAX', 5000);
const FROM = countFrom('FAIL_NTH_FROM', 1);
/** A queue page's memory, as the simulator names its memfds (`sa1-queue-<q>.<n>`, `sa1-queue-spare.<n>`). */
const QUEUE_PAGE = /memfd:sa1-queue-/;
/**
 * Open descriptors by what they are (socket, anon_inode:[pidfd], /memfd:…), counted. Not queue pages: with no
 * lease left, the ones this process (broker and clients) holds are the slice fds the broker keeps prepared for
 * its next grants (lifetime.prepared_slice_fds), which come and go with each reclaim; pagesBeyondPrepared()
 * checks their count against what the broker says it holds.
 */
const kinds = (fds: Map<string, string>): Map<string, number> => {
  const out = new Map<string, number>();
  for (const t of fds.values()) {
    if (QUEUE_PAGE.test(t)) continue;
    const k = t.replace(/\[\d+\]$/, '');
    out.set(k, (out.get(k) ?? 0) + 1);
  }
  return out;
};
const queuePages = (fds: Map<string, string>): number =>
  [...fds.values()].filter((t) => QUEUE_PAGE.test(t)).length;
const kindDiff = (a: Map<string, string>, b: Map<string, string>): boolean => {
  const ka = kinds(a);
  const kb = kinds(b);
  return ka.size !== kb.size || [...ka].some(([k, v]) => kb.get(k) !== v);
};
const OPS = (process.env.FAIL_NTH_OPS ?? 'lease,map,unmap,revoke,revoke-deadline,reclaim').split(',');

test(`fail-nth: every native syscall of lease, map, unmap, revoke and reclaim fails in turn (stride ${STRIDE})`, {
  timeout: 24 * 3600_000,
}, async () => {
  // Installed before devlease loads (native.ts decides once, at load): hence the dynamic imports.
  process.env.DEVLEASE_FAIL_NTH ??= '0';
  const { failNth, failNthFired, failNthInstalled } = await import('../../src/sys/fail-nth.js');
  const { connect } = await import('../../src/client/lease.js');
  const { Sa1Queue } = await import('../../src/client/sa1-queue.js');
  const { leaseAndCopy } = await import('../helpers/lease-copy.js');
  const { adminRequest } = await import('../../src/cli/admin.js');
  const { startRig, until } = await import('../helpers/broker-rig.js');
  assert.ok(
    failNthInstalled(),
    'the fail-nth hook did not install (was devlease loaded before the test set it?)',
  );

  const crashes: string[] = [];
  const onCrash = (err: unknown) => crashes.push((err as Error)?.stack ?? String(err));
  process.on('uncaughtException', onCrash);
  process.on('unhandledRejection', onCrash);
  // The heartbeat would make syscalls of its own in the middle of a walk: set far apart.
  const rig = await startRig({ config: { sa1: { heartbeat_ms: 60_000 } } });
  const { broker } = rig;
  const admin = `${broker.dir}/admin.sock`;
  const open = (): Promise<Lease> => connect({ socket: rig.socket, request: {}, timeoutMs: 10_000 });
  const noLeases = () => until('the lease table to empty', () => broker.leases.all().length === 0, 15_000);
  const started = Date.now();

  const freshLeaseWorks = async () => {
    await leaseAndCopy(rig.socket, { timeoutMs: 10_000 });
    await noLeases();
  };
  await freshLeaseWorks(); // warms everything up that is made once (the admin path, lazy tables)
  await adminRequest(admin, { op: 'status' });
  const snap = () => ({
    fds: fdTargets(process.pid),
    maps: mappingCount(process.pid, 'memfd:'),
    simFds: fdCount(rig.sim.pid),
    simMaps: mappingCount(rig.sim.pid, 'memfd:'),
  });
  // The baseline is the settled state: connections of the warm-up close asynchronously on the broker's side.
  let base = snap();
  for (let settled = 0; settled < 5; ) {
    await new Promise((r) => setTimeout(r, 200));
    const now = snap();
    settled = fdDiff(base.fds, now.fds) === '' && now.maps === base.maps ? settled + 1 : 0;
    base = now;
  }
  const judge: Judge = {
    async leaks() {
      const end = Date.now() + 15_000;
      for (;;) {
        const leases = broker.leases.all().map((l) => `${l.id}:${l.state}`);
        const now = snap();
        // By kind, not number: a device link that reconnects replaces its socket and eventfds (not a leak).
        // ('' when the kinds match: a boolean false here once made every such try wait out the deadline.)
        const diff = kindDiff(base.fds, now.fds) ? fdDiff(base.fds, now.fds) : '';
        // A try that dropped the device connection is over once the broker has it back (and its io fds).
        const linkUp = broker.deviceConnection().state === 'up';
        // Queue pages beyond the prepared slice fds the broker reports (at most the cap of 8): a leak.
        // (A try that dropped the device connection makes the status read fail until the link is back: not settled.)
        const prepared = await broker.driver.status().then(
          (st) => Number((st as { preparedSliceFds?: number }).preparedSliceFds),
          () => Number.NaN,
        );
        const extraPages = queuePages(now.fds) - prepared;
        const overCap = prepared > 8 || extraPages !== 0;
        const same =
          linkUp &&
          leases.length === 0 &&
          diff === '' &&
          !overCap &&
          now.maps === base.maps &&
          now.simFds === base.simFds &&
          now.simMaps === base.simMaps;
        if (same) return null;
        if (Date.now() > end) {
          base = now; // each leak is reported once, by the try that made it
          return [
            linkUp ? '' : `the device connection is still ${broker.deviceConnection().state}`,
            leases.length ? `leases [${leases.join(' ')}]` : '',
            diff ? `fds ${diff}` : '',
            overCap ? `${queuePages(now.fds)} queue-page fds, ${prepared} of them prepared (cap 8)` : '',
            now.maps !== base.maps ? `memfd mappings ${base.maps} -> ${now.maps}` : '',
            now.simFds !== base.simFds ? `simulator fds ${base.simFds} -> ${now.simFds}` : '',
            now.simMaps !== base.simMaps ? `simulator memfd mappings ${base.simMaps} -> ${now.simMaps}` : '',
          ]
            .filter(Boolean)
            .join('; ');
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    freshLeaseWorks,
    crashes: () => crashes.splice(0),
  };

  interface S {
    lease: Lease | null;
    buf: DmaBuffer | null;
  }
  const closeLease = async (s: S) => {
    s.lease?.close();
    await noLeases();
  };
  const withLease = async (): Promise<S> => ({ lease: await open(), buf: null });
  const withBuffer = async (): Promise<S> => {
    const s = await withLease();
    s.buf = await s.lease!.dma.alloc(4096);
    return s;
  };
  const revoke = (deadlineMs: number) => async (s: S) => {
    await adminRequest(admin, { op: 'revoke', id: s.lease!.info.lease, deadlineMs }, 15_000);
    await noLeases(); // the revoke ends when the broker has reclaimed the lease
  };
  const ops: Operation<S>[] = [
    {
      name: 'lease',
      setup: async () => ({ lease: null, buf: null }),
      run: async (s) => {
        s.lease = await open();
      },
      teardown: closeLease,
    },
    {
      name: 'map',
      setup: withLease,
      run: async (s) => {
        s.buf = await s.lease!.dma.alloc(4096);
      },
      teardown: closeLease,
    },
    { name: 'unmap', setup: withBuffer, run: async (s) => s.buf!.free(), teardown: closeLease },
    { name: 'revoke', setup: withBuffer, run: revoke(0), teardown: closeLease },
    { name: 'revoke-deadline', setup: withBuffer, run: revoke(50), teardown: closeLease },
    {
      name: 'reclaim',
      setup: async () => {
        const s = await withBuffer();
        await Sa1Queue.create(s.lease!, { entries: 4 });
        return s;
      },
      run: async (s) => {
        s.lease!.close();
        await noLeases();
      },
      teardown: closeLease,
    },
  ];
  const unknown = OPS.filter((o) => !ops.some((op) => op.name === o));
  assert.deepEqual(unknown, [], `FAIL_NTH_OPS names unknown operations: ${unknown.join(', ')}`);

  const results: WalkResult[] = [];
  for (const op of ops.filter((o) => OPS.includes(o.name))) {
    const t0 = Date.now();
    const r = await walk(
      op,
      { failNth, failNthFired },
      judge,
      { from: FROM, stride: STRIDE, max: MAX, deadlineMs: 30_000, freshEvery: 1 },
      console.log,
    );
    results.push(r);
    const calls = Object.entries(r.failedCalls)
      .map(([k, v]) => `${k}×${v}`)
      .join(' ');
    const errors = Object.entries(r.errors)
      .map(([k, v]) => `${k}×${v}`)
      .join(' ');
    console.log(
      `# fail-nth: ${op.name}: ${r.sites} sites (${r.tried} tried), ${r.leaks} leaks, ${r.problems.length} problems, ` +
        `${r.absorbed} absorbed; errors ${errors || 'none'}; failed calls ${calls} (${((Date.now() - t0) / 1000).toFixed(1)} s)`,
    );
  }
  process.off('uncaughtException', onCrash);
  process.off('unhandledRejection', onCrash);
  await rig.close();

  const sites = results.reduce((a, r) => a + r.sites, 0);
  const tried = results.reduce((a, r) => a + r.tried, 0);
  const leaks = results.reduce((a, r) => a + r.leaks, 0);
  const problems = results.flatMap((r) => r.problems);
  const failures = results.reduce((a, r) => a + Object.values(r.errors).reduce((x, y) => x + y, 0), 0);
  console.log(
    `# fail-nth: ${sites} sites walked (${tried} tries, stride ${STRIDE}) over ${results.length} operations, ` +
      `${failures} clear errors, ${leaks} leaks, ${problems.length} problems, ${crashes.length} crashes, ` +
      `${((Date.now() - started) / 1000).toFixed(0)} s`,
  );
  assert.deepEqual(problems, [], `fail-nth problems:\n${problems.join('\n')}`);
});
