// What the lease VM tests share: devlease sim + devlease daemon for a VM to
// lease from, the admin commands they check with, and the guest driver's
// result line checked as a stock client's use of a lease must go.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ST_WINDOW_VIOLATION } from '../../src/hw/sa1/datasheet.js';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import type { Daemon, Peers } from '../interop/helpers/peers.js';
import type { Vm } from './rig.js';

const DRIVER = /DEVLEASE-VM-DRIVER (.*)$/;
export const BOOT_MS = 240_000;

export interface LeaseRow {
  id: string;
  pid: number;
  state: string;
  mappings: number;
  mappedBytes: string;
  relayedMappings: number;
}

export async function admin(rundir: string, ...args: string[]): Promise<unknown> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [DEVLEASE_BIN, ...args, '--rundir', rundir, '--json'],
    { timeout: 30_000 },
  );
  return JSON.parse(stdout);
}
export const leases = async (rundir: string): Promise<LeaseRow[]> =>
  (await admin(rundir, 'leases')) as LeaseRow[];

/** devlease sim and devlease daemon on it (with `config`, a TOML file's text); the lease socket a VM connects to. */
export async function broker(
  peers: Peers,
  config?: string,
): Promise<{ daemon: Daemon; rundir: string; socket: string }> {
  const sim = join(peers.dir, 'sim.sock');
  await peers.sim(sim, ['--queues', '8']);
  const rundir = join(peers.dir, 'run');
  const args: string[] = [];
  if (config !== undefined) {
    writeFileSync(join(peers.dir, 'devlease.toml'), config);
    args.push('--config', join(peers.dir, 'devlease.toml'));
  }
  const daemon = await peers.daemon(sim, rundir, args);
  const socket = daemon.sockets.queue;
  assert.ok(socket, `the daemon serves a 'queue' kind (sockets: ${JSON.stringify(daemon.sockets)})`);
  return { daemon, rundir, socket };
}

/**
 * The guest driver's result line, checked: verified work and an interrupt, a fault, a reset through the
 * lease, work and an interrupt again. Returns the console index of that line.
 */
export async function driverResult(vm: Vm, what: string): Promise<number> {
  const { index, match } = await vm.waitLine(DRIVER, 0, BOOT_MS);
  const d = JSON.parse(match[1] as string);
  const ctx = `${what}\n${vm.context()}`;
  // What a lease lacks, named: the guest's maps refused (no IOVA view of its own), no MSI-X capability.
  const refused = /vfio_container_dma_map\(.*Operation not permitted/.test(vm.stderr)
    ? " (the lease refused QEMU's DMA_MAPs at the guest's IOVAs with EPERM: it has no IOVA view starting at 0)"
    : '';
  assert.equal(d.error, undefined, `the guest driver failed on the lease: ${d.error}${refused}\n${ctx}`);
  assert.equal(d.owner, false);
  assert.equal(d.hugePage, true, 'the DMA buffer is one 2 MiB huge page of guest RAM');
  assert.equal(d.reset, 'VFIO_DEVICE_RESET', 'the queue was reset through the lease');
  assert.ok(d.vectors >= 1, `the lease has MSI-X vectors (${d.vectors})`);
  assert.ok(
    d.irqVector >= 0 && d.irqVectorAfterReset >= 0,
    'completions came by interrupt, before and after the reset',
  );
  assert.equal(
    d.fault.qError,
    ST_WINDOW_VIOLATION,
    'the out-of-window descriptor faulted the queue (Q_ERROR)',
  );
  return index;
}

/** QEMU saw no ERR from the lease: it never stopped the VM. */
export function assertNeverStopped(vm: Vm): void {
  const events = vm.qmp.events.map((e) => e.event);
  assert.ok(!events.includes('STOP'), `the VM never stopped (QMP events: ${events.join(' ')})`);
  assert.doesNotMatch(vm.stderr, /Unrecoverable error/, 'QEMU saw no ERR signal');
}
