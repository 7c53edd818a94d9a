// A real deployment for tests: the SA-1 simulator as a child process
// (`devlease sim`), the broker in this process (so tests can look at its
// lease table and audit log), and lease clients as child processes driven
// over IPC (test/fixtures/broker/lease-client.ts).

import { type ChildProcess, fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DenialLimits } from '../../src/broker/audit-denials.js';
import { Broker } from '../../src/broker/broker.js';
import { configFromObject, loadConfig } from '../../src/broker/config.js';
import type { PolicyModule } from '../../src/broker/policy.js';
import { VfioUserDevice } from '../../src/device/vfio-user-device.js';
import { type ChildSimulator, spawnSimulator } from '../../src/sim/host/child.js';
import type { Sa1Options } from '../../src/sim/model/options.js';

const here = dirname(fileURLToPath(import.meta.url));
export const LEASE_CLIENT = join(here, '..', 'fixtures', 'broker', 'lease-client.js');
/** A stock vfio-user client (no devlease in VERSION, no REQ wired), as QEMU's vfio-user-pci. */
export const STOCK_CLIENT = join(here, '..', 'fixtures', 'broker', 'stock-client.js');

export interface Rig {
  dir: string;
  simSocket: string;
  /** The simulator child, with fault injection (`sim.inject({ kind: 'hang' })`). */
  sim: ChildSimulator;
  device: VfioUserDevice;
  broker: Broker;
  socket: string;
  audit: Record<string, any>[];
  close(): Promise<void>;
}

export async function startRig(
  opts: {
    config?: Record<string, unknown>;
    /** A config file instead of `config` (rundir overridden), which broker.reload() re-reads. */
    configFile?: string;
    /** The simulator child's options; maxDmaMaps is its --max-dma-maps. */
    sim?: Partial<Sa1Options> & { maxDmaMaps?: number };
    /** Each device request's deadline, as an embedder may open the device with (default 5000 ms). */
    deviceTimeoutMs?: number;
    policyModule?: PolicyModule;
    log?: (msg: string) => void;
    /** How the audit log collapses repeated denials (default: the broker's). */
    auditDenials?: DenialLimits;
  } = {},
): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-test-'));
  const overrides = { rundir: join(dir, 'run') };
  // First: a config the broker refuses leaves nothing running.
  let config: ReturnType<typeof configFromObject>;
  try {
    config = opts.configFile
      ? Object.assign(loadConfig(opts.configFile), overrides)
      : configFromObject({ ...overrides, ...(opts.config ?? {}) });
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const simSocket = join(dir, 'sim.sock');
  const sim = await spawnSimulator({ socketPath: simSocket, numQueues: 8, ...opts.sim });
  const device = await VfioUserDevice.connect(
    simSocket,
    opts.deviceTimeoutMs === undefined ? {} : { timeoutMs: opts.deviceTimeoutMs },
  );
  const audit: Record<string, any>[] = [];
  let broker: Broker;
  try {
    broker = await Broker.start({
      config,
      device,
      ...(opts.policyModule ? { policyModule: opts.policyModule } : {}),
      ...(opts.configFile ? { configSource: { path: opts.configFile, overrides } } : {}),
      auditSink: (line) => audit.push(JSON.parse(line)),
      ...(opts.auditDenials ? { auditDenials: opts.auditDenials } : {}),
      log: opts.log ?? (() => {}),
    });
  } catch (err) {
    await device.close();
    await sim.close();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const rig: Rig = {
    dir,
    simSocket,
    sim,
    device,
    broker,
    socket: broker.sockets.get('queue') ?? '',
    audit,
    async close() {
      await broker.close();
      await device.close();
      await rig.sim.close(); // the current one: a test may have started the simulator again
      if (rig.sim !== sim) await sim.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return rig;
}

/** A lease client process. `call(op, args)` runs one scripted step there. */
export class ClientProc {
  readonly proc: ChildProcess;
  readonly pid: number;
  #next = 1;
  readonly #waiting = new Map<number, { resolve(v: any): void; reject(e: Error): void }>();
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(proc: ChildProcess) {
    this.proc = proc;
    this.pid = proc.pid!;
    proc.on(
      'message',
      (m: {
        id?: number;
        ok?: boolean;
        result?: unknown;
        error?: { message: string; code?: string; reason?: string };
      }) => {
        const w = m.id === undefined ? undefined : this.#waiting.get(m.id);
        if (!w) return;
        this.#waiting.delete(m.id!);
        if (m.ok) w.resolve(m.result);
        else
          w.reject(
            Object.assign(new Error(m.error!.message), { code: m.error!.code, reason: m.error!.reason }),
          );
      },
    );
    this.exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
    void this.exited.then(() => {
      for (const w of this.#waiting.values()) w.reject(new Error('lease client exited'));
      this.#waiting.clear();
    });
  }

  /** `as`: run the client as another uid/gid (the tests run as root). `script`: which fixture client. */
  static async spawn(
    as: { uid: number; gid: number } | null = null,
    script = LEASE_CLIENT,
  ): Promise<ClientProc> {
    const proc = fork(script, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], ...as });
    await new Promise<void>((resolve, reject) => {
      proc.once('message', () => resolve());
      proc.once('exit', (c) => reject(new Error(`lease client exited early (${c})`)));
    });
    return new ClientProc(proc);
  }

  call<T = any>(op: string, args: Record<string, unknown> = {}): Promise<T> {
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      this.#waiting.set(id, { resolve, reject });
      this.proc.send({ id, op, ...args });
    });
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    this.proc.kill(signal);
    await this.exited;
  }

  async exit(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    await this.call('exit').catch(() => undefined);
    await this.exited;
  }
}

/**
 * Wait until the broker holds no lease and no prepared slice fd is still on its way: a reclaim asks the device
 * for the next grant's page fd and ends without waiting for the answer (lease-reclaim.ts, prepareAhead), so the
 * broker's fd count settles only once that answer is in. A test that counts the broker's fds waits for this.
 */
export async function untilReclaimed(rig: Rig, timeoutMs = 5000): Promise<void> {
  await until(
    'the broker to reclaim every lease and hold its prepared slice fds',
    () =>
      rig.broker.leases.all().length === 0 &&
      rig.device.preparedSliceFdCount === rig.device.preparedSliceFdsHeld,
    timeoutMs,
  );
}

export async function until(
  what: string,
  pred: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
