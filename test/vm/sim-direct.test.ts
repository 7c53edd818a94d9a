// A virtual machine on `devlease sim` directly: QEMU 11.1's vfio-user-pci
// connects to the simulator's socket, and the guest sees an SA-1 as any PCI
// device — ids, BARs, MSI-X — and reaches BAR0 through QEMU. A machine reset
// (QEMU sends VFIO_USER_DEVICE_RESET) must leave the VM running: QEMU stops a
// VM on any ERR signal, and a reset the owner asked for is no error.
// Run by `npm run test:vm` (test/vm/run-all.mjs), never by `npm test`.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { before, test } from 'node:test';
import * as ds from '../../src/sim/model/datasheet.js';
import { assertNoFdLeak } from '../helpers/fds.js';
import { withDeadline } from './qmp.js';
import { type GuestCommand, guestDriver, guestImages, projectRoot, qemu11, Vm } from './rig.js';

const GUEST = ['dist/test/vm/guest/sim-device.js'];
const DRIVER = /DEVLEASE-VM-DRIVER (.*)$/;
const RESULT = /DEVLEASE-VM-RESULT (.*)$/;
// (unanchored: the firmware leaves terminal escapes on the console)
const INIT = /devlease-init: config vfio-user/;
const BOOT_MS = 180_000;
const NUM_QUEUES = 64;
const STRIDE = 65536;
const DEVMEM_MIB = 64;

interface GuestResult {
  error?: string;
  vendor: string;
  device: string;
  class: string;
  barSizes: number[];
  configBytes: number;
  msix: Record<string, number> | null;
  bar0: {
    id: number;
    status: number;
    numQueues: number;
    scratchBefore: number;
    scratchReadBack: number[];
  } | null;
}

before(() => {
  // Installs or finds cached: QEMU 11 and the guest images (minutes on a fresh machine).
  qemu11();
  guestImages();
  guestDriver();
});

/** `devlease sim` with its control on stdin (for its stats); its stdout lines are kept in `lines`. */
async function startSim(socket: string): Promise<ChildProcess & { lines: string[] }> {
  const sim = spawn(
    process.execPath,
    [
      join(projectRoot, 'bin/devlease.js'),
      'sim',
      '--control-stdin',
      '--socket',
      socket,
      '--queues',
      `${NUM_QUEUES}`,
      '--stride',
      `${STRIDE}`,
      '--devmem',
      `${DEVMEM_MIB}`,
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const lines: string[] = [];
  const ready = new Promise<void>((res, rej) => {
    const rl = createInterface({ input: sim.stdout! });
    rl.on('line', (l) => {
      lines.push(l);
      if (l.startsWith('ready ')) res();
    });
    sim.once('exit', (code) => rej(new Error(`devlease sim exited (${code}) before it was ready`)));
  });
  await withDeadline(ready, 30_000, 'devlease sim ready');
  return Object.assign(sim, { lines });
}

/** The simulator's device stats (its control's `stats` request). */
async function simStats(sim: ChildProcess & { lines: string[] }): Promise<Record<string, number>> {
  const from = sim.lines.length;
  sim.stdin?.write('{"kind":"stats"}\n');
  const deadline = Date.now() + 10_000;
  for (;;) {
    const line = sim.lines.slice(from).find((l) => l.startsWith('{'));
    if (line) {
      const reply = JSON.parse(line) as { ok: boolean; stats?: Record<string, number>; error?: string };
      if (!reply.ok || !reply.stats) throw new Error(`devlease sim stats: ${reply.error}`);
      return reply.stats;
    }
    if (Date.now() > deadline) throw new Error('devlease sim did not answer its stats request');
    await new Promise((res) => setTimeout(res, 20));
  }
}

async function stopSim(sim: ChildProcess): Promise<number | null> {
  if (sim.exitCode !== null) return sim.exitCode;
  const exited = new Promise<number | null>((res) => sim.once('exit', (code) => res(code)));
  sim.kill('SIGTERM');
  return withDeadline(exited, 10_000, 'devlease sim exit after SIGTERM');
}

/** What a test gets from withSim(): the simulator, and the VM boot on its socket. */
interface SimRun {
  sim: ChildProcess & { lines: string[] };
  /** Vm.boot on the simulator's socket; withSim kills that VM at the end (a no-op once it has quit). */
  boot(commands: GuestCommand[], opts?: { sharedRam?: boolean }): Promise<Vm>;
}

/**
 * `body` with `devlease sim` on a socket in a new directory (`prefix`); afterwards, however it ended, the VM
 * it booted is killed, the simulator stopped and the directory removed, and no fd of this process is left.
 */
async function withSim(prefix: string, body: (run: SimRun) => Promise<void>): Promise<void> {
  await assertNoFdLeak(async () => {
    const dir = mkdtempSync(join(tmpdir(), prefix));
    const socket = join(dir, 'sim.sock');
    const sim = await startSim(socket);
    let vm: Vm | undefined;
    const boot = async (commands: GuestCommand[], opts?: { sharedRam?: boolean }): Promise<Vm> => {
      vm = await Vm.boot(socket, commands, opts);
      return vm;
    };
    try {
      await body({ sim, boot });
    } finally {
      await vm?.kill();
      await stopSim(sim).catch(() => sim.kill('SIGKILL'));
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

async function guestResult(vm: Vm, from: number): Promise<{ index: number; result: GuestResult }> {
  const { index, match } = await vm.waitLine(RESULT, from, BOOT_MS);
  return { index, result: JSON.parse(match[1] as string) as GuestResult };
}

function assertSa1(r: GuestResult, what: string): void {
  assert.equal(r.error, undefined, `${what}: the guest program failed: ${r.error}`);
  assert.deepEqual([r.vendor, r.device, r.class], ['0x1234', '0x5a01', '0x120000'], `${what}: ids`);
  const bar2 = NUM_QUEUES * STRIDE; // a power of two here
  assert.deepEqual(
    [r.barSizes[0], r.barSizes[2], r.barSizes[4]],
    [ds.BAR0_SIZE, bar2, DEVMEM_MIB << 20],
    `${what}: BAR0/2/4 sizes as the datasheet gives them`,
  );
  assert.deepEqual(
    r.msix && { ...r.msix, offset: undefined },
    {
      offset: undefined,
      vectors: NUM_QUEUES + 1,
      tableBar: 0,
      tableOffset: ds.REG_MSIX_TABLE,
      pbaBar: 0,
      pbaOffset: ds.REG_MSIX_PBA,
    },
    `${what}: an MSI-X capability with NUM_QUEUES + 1 vectors, table and PBA in BAR0`,
  );
  assert.ok(r.bar0, `${what}: the guest has BAR0 (resource0)`);
  assert.equal(r.bar0.id, 0x5a01_0001, `${what}: BAR0 ID`);
  assert.equal(r.bar0.numQueues, NUM_QUEUES, `${what}: BAR0 NUM_QUEUES`);
  assert.deepEqual(r.bar0.scratchReadBack, [0xdeadbeef, 0x5a5a_a5a5], `${what}: SCRATCH round-trips`);
}

test('a VM on devlease sim: the guest sees the SA-1 with its BARs and MSI-X, reaches BAR0, and runs on through a machine reset', async (t) => {
  await withSim('devlease-vm-sim-', async ({ sim, boot }) => {
    const vm = await boot([{ node: GUEST }, { exec: [guestDriver(), '--owner', '--device-reset'] }]);
    const init = await vm.waitLine(INIT, 0, BOOT_MS);
    t.diagnostic(`boot to init: ${((Date.now() - vm.startedAt) / 1000).toFixed(1)} s`);
    const first = await guestResult(vm, init.index);
    t.diagnostic(`first boot, guest result: ${((Date.now() - vm.startedAt) / 1000).toFixed(1)} s`);
    assertSa1(first.result, 'first boot');

    // The guest driver as the device's owner: firmware, QCFG[0], rings in guest RAM behind the
    // guest's IOMMU, MSI-X, verified work, a completion by interrupt, a fault and a queue reset.
    const driver = await vm.waitLine(DRIVER, first.index, BOOT_MS);
    t.diagnostic(`guest driver done: ${((Date.now() - vm.startedAt) / 1000).toFixed(1)} s`);
    const d = JSON.parse(driver.match[1] as string);
    for (const l of vm.lines.slice(first.index, driver.index))
      if (l.includes('DEVLEASE-VM-STEP')) t.diagnostic(l);
    assert.equal(d.error, undefined, `the guest driver failed: ${d.error}\n${vm.context()}`);
    assert.equal(d.vectors, NUM_QUEUES + 1, 'the driver wired every MSI-X vector');
    assert.equal(d.irqVector, 0, 'the INTR completion came by vector 0 (QCFG[0].Q_VECTOR)');
    assert.equal(d.irqVectorAfterReset, 0, 'and again after the reset');
    // The reset a lease's holder uses: the guest's VFIO_DEVICE_RESET is a secondary bus reset of the
    // root port, which QEMU sends as VFIO_USER_DEVICE_RESET (here: the whole device, set up again).
    assert.equal(d.reset, 'VFIO_DEVICE_RESET');
    assert.equal(d.fault.qError, ds.ST_WINDOW_VIOLATION, 'the out-of-window descriptor faulted the queue');
    assert.equal(await vm.qmp.status(), 'running');

    // A machine reset: QEMU sends VFIO_USER_DEVICE_RESET, the guest boots again.
    const resetAt = Date.now();
    await vm.qmp.execute('system_reset');
    const second = await guestResult(vm, driver.index + 1);
    t.diagnostic(`reset to second result: ${((Date.now() - resetAt) / 1000).toFixed(1)} s`);
    assertSa1(second.result, 'after the machine reset');
    assert.equal(
      second.result.bar0?.scratchBefore,
      0,
      'SCRATCH is 0 again (the guest driver left 0x5ca1ab1e in it): the device reset reached the simulator',
    );
    assert.equal(await vm.qmp.status(), 'running', 'the VM runs on after the machine reset');
    const events = vm.qmp.events.map((e) => e.event);
    assert.ok(events.includes('RESET'), `QMP reported the reset (events: ${events.join(' ')})`);
    assert.ok(!events.includes('STOP'), `the VM never stopped (events: ${events.join(' ')})`);
    assert.doesNotMatch(
      vm.stderr,
      /Unrecoverable error|failed to get region/,
      'QEMU reported no device error',
    );

    const exit = await vm.quit();
    assert.deepEqual(exit, { code: 0, signal: null }, 'QEMU exits 0 on quit');
    assert.equal(await stopSim(sim), 0, 'the simulator outlived its VM client and exits cleanly');
  });
});

test('a VM whose RAM is not shared drives SA-1 through DMA_READ/DMA_WRITE: rings, payloads and firmware in guest RAM the simulator cannot map', async (t) => {
  await withSim('devlease-vm-sim-nofd-', async ({ sim, boot }) => {
    // Without a shared memory backend QEMU has no fd for guest RAM: every DMA_MAP it forwards for the
    // guest's IOMMU maps comes without one, and the device reaches that memory only by asking QEMU.
    const vm = await boot([{ exec: [guestDriver(), '--owner'] }], { sharedRam: false });
    const driver = await vm.waitLine(DRIVER, 0, BOOT_MS);
    t.diagnostic(`guest driver done: ${((Date.now() - vm.startedAt) / 1000).toFixed(1)} s`);
    for (const l of vm.lines.slice(0, driver.index)) if (l.includes('DEVLEASE-VM-STEP')) t.diagnostic(l);
    const d = JSON.parse(driver.match[1] as string);
    assert.equal(d.error, undefined, `the guest driver failed: ${d.error}\n${vm.context()}`);
    assert.equal(d.irqVector, 0, 'the INTR completion came by vector 0');
    assert.equal(d.fault.qError, ds.ST_WINDOW_VIOLATION, 'the out-of-window descriptor faulted the queue');
    assert.equal(await vm.qmp.status(), 'running');
    assert.doesNotMatch(
      vm.stderr,
      /error reply on async request command 2|Unrecoverable error/,
      'QEMU saw no DMA_MAP refused and no device error',
    );
    // Every map came without an fd, and the device's accesses all went through QEMU and succeeded.
    const stats = await simStats(sim);
    t.diagnostic(`simulator: ${JSON.stringify(stats)}`);
    assert.ok(stats.dmaMaps > 0 && stats.dmaMapsRemote === stats.dmaMaps, 'every DMA map is without an fd');
    assert.ok(stats.remoteAccesses > 0, 'the device reached guest RAM through DMA_READ/DMA_WRITE');
    assert.equal(stats.remoteFailures, 0, 'and none of those accesses failed');
    const exit = await vm.quit();
    assert.deepEqual(exit, { code: 0, signal: null }, 'QEMU exits 0 on quit');
    assert.equal(await stopSim(sim), 0, 'the simulator exits cleanly');
  });
});
