// Runs INSIDE a kernel-rig guest (npm run test:kernel), never on the host.
// A broker upgrade while audited direct slices are handed out (the page-slice driver over QEMU's ivshmem-plain,
// a `devlease daemon`): the audit travels with the state (version 5) — each lease's hand-off, its holder and the
// processes seen mapping its page legitimately — so the new broker goes on auditing where the old one stopped.
// Before, the upgrade was refused while any page was handed out.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { after, test } from 'node:test';
import { trackFdLeaks } from '../../helpers/fds.js';
import { Daemon, until } from './fixtures/daemon.js';
import { inKernelGuest } from './fixtures/guest.js';
import { startIvshmemClient } from './fixtures/ivshmem-clients.js';

const procs: ChildProcess[] = [];

after(async () => {
  for (const p of procs) p.kill('SIGKILL');
});
after(trackFdLeaks());

inKernelGuest('ivshmem-plain bound to vfio-pci', 'DEVLEASE_IVSHMEM_BDF');

const startClient = (socket: string, mode: string, byte: number) =>
  startIvshmemClient(procs, socket, mode, byte);

test('upgrade with audited pages handed out: the new broker audits them, awaits a parked release, catches a kept fd', async () => {
  const d = new Daemon({
    bdf: process.env.DEVLEASE_IVSHMEM_BDF ?? '',
    name: 'ivshmem',
    config:
      '[device]\nname = "ivshmem"\n[audit]\naction = "revoke"\nperiod_ms = 300\nhandoff_grace_ms = 20000\n',
  });
  await d.start();
  // Every audit record of both brokers (each prints its records on stdout).
  const records = (event: string) =>
    d.out
      .split('\n')
      .filter((l) => l.startsWith('{"time"'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((r) => r.event === event);
  const leases = async () =>
    (await d.request({ op: 'leases' })) as { id: string; state: string; queue: number }[];
  const stateOf = async (id: string) => (await leases()).find((l) => l.id === id)?.state;
  try {
    const socket = d.socket('page');
    const oldPid = (await d.request({ op: 'status' })).pid as number;
    // One lease parked awaiting its page's release (its holder killed, a forked child maps the page still) ...
    const parked = await startClient(socket, 'fork', 0x3c);
    const parkedId = String(parked.first.lease);
    const child = Number(parked.first.child);
    parked.proc.kill('SIGKILL');
    await parked.exited;
    await until(
      'the lease to await its release',
      async () => (await stateOf(parkedId)) === 'awaiting-release',
    );
    // ... and one live.
    const live = await startClient(socket, 'good', 0x5a);
    assert.equal(live.first.ok, true);

    const r = await d.request({ op: 'upgrade', deadlineMs: 150_000 });
    assert.equal(r.upgraded, true);
    const newPid = (await d.request({ op: 'status' })).pid as number;
    assert.notEqual(newPid, oldPid);
    await until('the old broker to exit', () => !existsSync(`/proc/${oldPid}`), 30_000);

    // The new broker audits what it was handed: the forked child's mapping is still one it knows.
    // Several scans of the new broker ran with the child mapping the page: the negative checks below are not vacuous.
    const scans = async () =>
      ((await d.request({ op: 'status' })).directSlices as { scans: number } | undefined)?.scans ?? 0;
    const scans0 = await scans();
    await until('three more audit scans of the new broker', async () => (await scans()) >= scans0 + 3);
    assert.deepEqual(records('audit-violation'), [], 'no violation: not the brokers, not the clients');
    assert.equal(await stateOf(parkedId), 'awaiting-release', 'the forked child maps the page still');
    assert.equal(await stateOf(String(live.first.lease)), 'active');
    // The page-slice driver took both pages as leased: a new lease gets a third.
    const third = await startClient(socket, 'good', 0x77);
    const pages = new Map((await leases()).map((l) => [l.id, l.queue]));
    const thirdPage = pages.get(String(third.first.lease));
    assert.ok(thirdPage !== undefined && thirdPage !== pages.get(parkedId), 'not the parked page');
    assert.notEqual(thirdPage, pages.get(String(live.first.lease)), 'not the live page');
    third.proc.kill('SIGKILL');
    process.kill(child, 'SIGKILL');
    await until('the parked lease to be released', async () => (await stateOf(parkedId)) === undefined);

    // A client keeping the device fd after its hand-off: the new broker's audit revokes its lease.
    const keeper = await startClient(socket, 'keep-fd', 0x11);
    await until('the kept fd to be reported', () =>
      records('audit-violation').some((v) => v.pid === keeper.first.pid && v.finding === 'fd-kept'),
    );
  } catch (err) {
    throw Object.assign(err as Error, { message: `${(err as Error).message}\nbroker output:\n${d.out}` });
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    await d.stop();
  }
});
