// Runs INSIDE a kernel-rig guest (npm run test:kernel), never on the host.
// Audited direct slices on the kernel VFIO backend: QEMU's ivshmem-plain
// (BAR2: 1 MiB of a host file) bound to vfio-pci, leased a page at a time by
// the page-slice driver. Clients map their page from the device fd handed
// over once and closed before connect() returns; the broker audits /proc.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Broker } from '../../../src/broker/broker.js';
import { configFromObject } from '../../../src/broker/config.js';
import type { KernelDevice } from '../../../src/device/kernel/device.js';
import { openKernelDevice } from '../../../src/device/kernel/open.js';
import { trackFdLeaks } from '../../helpers/fds.js';
import { type StartedClient, startIvshmemClient } from './fixtures/ivshmem-clients.js';

const bdf = process.env.DEVLEASE_IVSHMEM_BDF ?? '';
const backingFile = process.env.DEVLEASE_IVSHMEM_FILE ?? '';
const here = dirname(fileURLToPath(import.meta.url));
const client = join(here, 'fixtures', 'ivshmem-client.js');
const BAR2 = 2;
const PAGE = 4096;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let dir = '';
let dev: KernelDevice;
let broker: Broker;
let socket = '';
const audit: Record<string, unknown>[] = [];
/** Device reads and writes of BAR2 (REGION_READ/WRITE land there; so does the scrub of a released page). */
const bar2Io: string[] = [];
const procs: ChildProcess[] = [];
let leakCheck: () => Promise<void> = async () => {};

before(async () => {
  assert.match(
    bdf,
    /^[0-9a-f]{4}:/,
    'DEVLEASE_IVSHMEM_BDF names the ivshmem-plain device (run npm run test:kernel)',
  );
  leakCheck = trackFdLeaks();
  dir = mkdtempSync(join(tmpdir(), 'devlease-ivshmem-'));
  dev = await openKernelDevice({ bdf, path: 'auto', log: () => {} });
  for (const op of ['read', 'write'] as const) {
    const real = dev[op].bind(dev) as (...a: unknown[]) => Promise<unknown>;
    (dev as unknown as Record<string, unknown>)[op] = (index: number, ...rest: unknown[]) => {
      if (index === BAR2) bar2Io.push(op);
      return real(index, ...rest);
    };
  }
  broker = await Broker.start({
    config: configFromObject({
      rundir: join(dir, 'run'),
      device: { name: 'ivshmem' },
      audit: { action: 'revoke', period_ms: 500, handoff_grace_ms: 20_000 },
    }),
    device: dev,
    auditSink: (l) => audit.push(JSON.parse(l) as Record<string, unknown>),
    log: () => {},
  });
  socket = broker.sockets.get('page') ?? '';
});

after(async () => {
  for (const p of procs) p.kill('SIGKILL');
  for (const p of procs)
    if (p.exitCode === null && p.signalCode === null) await new Promise((r) => p.once('exit', r));
  await broker?.close();
  await dev?.close();
  rmSync(dir, { recursive: true, force: true });
  await leakCheck();
});

type Started = StartedClient;

const start = (mode: string, byte = 0x5a): Promise<Started> =>
  startIvshmemClient(procs, socket, mode, byte, () => `\naudit: ${JSON.stringify(audit.slice(-4))}`);

async function until(what: string, cond: () => boolean, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const events = (event: string) => audit.filter((r) => r.event === event);
const leaseIdOf = (s: Started) => String(s.first.lease);
const released = (id: string) => events('released').some((r) => r.lease === id);

async function page(n: number): Promise<Uint8Array> {
  return dev.read(BAR2, n * PAGE, PAGE);
}

test('two clients map different pages of BAR2 directly, audited: no REGION_READ/WRITE, each pattern in its own page', async () => {
  assert.equal(broker.driver.name, 'page-slices');
  const status = await broker.status();
  assert.equal(
    (status.dmaBufMmap as { mmap: string }).mmap !== 'yes',
    true,
    'no kernel here mmaps a BAR dma-buf',
  );
  console.log(`# dma-buf mmap probe: ${JSON.stringify(status.dmaBufMmap)}`);
  bar2Io.length = 0;
  const a = await start('good', 0xa1);
  const b = await start('good', 0xb2);
  for (const c of [a, b]) {
    assert.equal(c.first.ok, true, 'the client read back its pattern through its own mapping');
    assert.equal((c.first.isolation as { level: string }).level, 'audited');
    assert.match((c.first.isolation as { reason: string }).reason, /killed/);
    assert.equal(c.first.vfioFds, 0, 'after connect() the client holds no VFIO fd');
  }
  assert.deepEqual(bar2Io, [], 'the broker read or wrote nothing of BAR2 for them');
  const rows = broker.leases.all().map((l) => l.summary());
  assert.deepEqual(
    rows.map((r) => (r.isolation as Record<string, string>).bar2),
    ['audited', 'audited'],
  );
  // (An upgrade with audited pages handed out: ivshmem-upgrade.test.ts, over a daemon.)
  // The owner's reader (pread on the device fd) and the host's backing file agree: each pattern in its own page.
  const [pa, pb, pc] = [await page(0), await page(1), await page(2)];
  assert.ok(pa.every((x) => x === 0xa1) && pb.every((x) => x === 0xb2) && pc.every((x) => x === 0));
  const fd = openSync(backingFile, 'r');
  try {
    const host = new Uint8Array(3 * PAGE);
    readSync(fd, host, 0, host.byteLength, 0);
    assert.ok(
      host.subarray(0, PAGE).every((x) => x === 0xa1),
      'page 0 of the host file',
    );
    assert.ok(
      host.subarray(PAGE, 2 * PAGE).every((x) => x === 0xb2),
      'page 1 of the host file',
    );
    assert.ok(
      host.subarray(2 * PAGE).every((x) => x === 0),
      'nothing elsewhere',
    );
  } finally {
    closeSync(fd);
  }
  broker.leases.direct!.auditor.scan();
  assert.deepEqual(events('audit-violation'), [], 'well-behaved clients: no violation');
  const cost = broker.leases.direct!.status();
  console.log(`# audit scan: ${JSON.stringify(cost)}`);
  for (const c of [a, b]) c.proc.kill('SIGKILL');
  await Promise.all([a.exited, b.exited]);
  await until('both pages released', () => released(leaseIdOf(a)) && released(leaseIdOf(b)));
  assert.ok(
    (await page(0)).every((x) => x === 0),
    'a released page is scrubbed before it is leased again',
  );
});

for (const [mode, finding] of [
  ['keep-fd', 'fd-kept'],
  ['pass-fd', 'fd-passed'],
  ['neighbour', 'mapping-outside-slice'],
] as const) {
  test(`misbehaving client (${mode}): audit record '${finding}' naming pid and exe, lease revoked, offenders killed`, async () => {
    // Not waiting for its report: the audit may catch and kill it before it prints (pass-fd: the child holds the
    // fd while the helper is still setting up).
    const proc = spawn(process.execPath, [client, socket, mode], { stdio: ['ignore', 'ignore', 'inherit'] });
    procs.push(proc);
    const exited = new Promise<void>((r) => proc.once('exit', () => r()));
    const holder = proc.pid!;
    const mine = (r: Record<string, unknown>) =>
      r.finding === finding && (r.pid === holder || r.ppid === holder);
    await until(`the ${finding} violation`, () => events('audit-violation').some(mine), 120_000);
    const rec = events('audit-violation').find(mine)!;
    if (mode === 'pass-fd') assert.equal(rec.ppid, holder, "the fd holder is the client's child");
    else assert.equal(rec.pid, holder);
    assert.match(String(rec.exe), mode === 'pass-fd' ? /sleep|busybox/ : /node/);
    assert.equal(rec.action, 'revoke');
    assert.match(String(rec.detail), mode === 'neighbour' ? /maps \[/ : /holds the device fd/);
    // The holder ends either way: killed at the revoke while still mapping, or (a race the audit may win while
    // the helper is still in its own setup) failing when its session is closed under it.
    await exited;
    assert.ok(proc.signalCode === 'SIGKILL' || proc.exitCode !== 0, 'the client lost its lease and ended');
    const lease = String(rec.lease);
    await until('the lease released', () => released(lease));
    // The offender is killed through its pidfd (pass-fd: the child holding the fd never ends on its own), not
    // merely ended by its closed session: the exit status above alone would accept any failure.
    await until('the offender killed', () => events('audit-kill').some((r) => r.pid === rec.pid));
  });
}

test('SIGKILL: the page is released only once no process maps it; a forked child holding it delays that', async () => {
  const c = await start('fork', 0x3c);
  const child = Number(c.first.child);
  const id = leaseIdOf(c);
  c.proc.kill('SIGKILL');
  await c.exited;
  await until('the lease awaiting release', () => broker.leases.get(id)?.state === 'awaiting-release');
  // Several audit scans ran with the child mapping the page: the negative checks below are not vacuous.
  const scans = () => broker.leases.direct!.status().scans as number;
  const scans0 = scans();
  await until('three more audit scans', () => scans() >= scans0 + 3);
  assert.equal(released(id), false, 'the forked child still maps the page');
  assert.deepEqual(
    events('audit-violation').filter((r) => r.pid === child),
    [],
    'an inherited mapping is no violation',
  );
  process.kill(child, 'SIGKILL');
  await until('the lease released after the child exited', () => released(id));
  const again = await start('good', 0x77);
  assert.equal(again.first.ok, true);
  again.proc.kill('SIGKILL');
  await again.exited;
  await until('released', () => released(leaseIdOf(again)));
});

test('revoke with a deadline: notice, the holder killed at the deadline, the page released', async () => {
  const c = await start('good', 0x42);
  const id = leaseIdOf(c);
  broker.leases.revoke(id, 1500, 'test revoke');
  await until('the revoke notice', () => c.lines.some((l) => l.event === 'revoke-requested'));
  let gone = false;
  void c.exited.then(() => {
    gone = true;
  });
  await until('the holder killed at the deadline', () => gone, 60_000);
  assert.equal(c.proc.signalCode, 'SIGKILL', 'killed at the deadline through its pidfd');
  await until('released', () => released(id));
  assert.ok(events('audit-kill').some((r) => r.pid === c.first.pid));
});

test('measure: a 4-byte slice read direct vs through the broker (TCG: the ratio only)', async () => {
  const c = await start('bench', 0x11);
  const b = c.first.bench as { directNs: number; brokerNs: number; ratio: number };
  console.log(
    `# 4-byte read: direct ${b.directNs.toFixed(0)} ns, via broker ${b.brokerNs.toFixed(0)} ns, ratio ${b.ratio.toFixed(0)}x`,
  );
  assert.ok(b.ratio > 0);
  c.proc.kill('SIGKILL');
  await c.exited;
  await until('released', () => released(leaseIdOf(c)));
});
