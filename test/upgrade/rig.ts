// A simulator, a `devlease daemon` and lease clients, each its own process, for the upgrade tests.
import assert from 'node:assert/strict';
import { type ChildProcess, fork, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { adminRequest } from '../../src/cli/admin.js';
import { type ChildSimulator, spawnSimulator } from '../../src/sim/host/child.js';
import type { PidFd } from '../../src/sys/pidfd.js';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { confirmedPidfd, signal } from '../helpers/pidfd.js';
import { alive, stopped } from '../helpers/proc-stat.js';
import { stopChild } from '../helpers/stop-child.js';
import { until } from '../interop/helpers/peers.js';

const CLIENT = join(dirname(fileURLToPath(import.meta.url)), '../fixtures/broker/upgrade-client.js');

export interface ClientStats {
  copies: number;
  bytes: number;
  errors: string[];
  controls: number;
  disconnects: number;
  leaseId: string;
}

export class UpgradeRig {
  readonly dir = mkdtempSync(join(tmpdir(), 'devlease-upgrade-'));
  sim!: ChildSimulator;
  daemon!: ChildProcess;
  out = '';
  readonly clients: ChildProcess[] = [];
  get admin(): string {
    return join(this.dir, 'run', 'sa1', 'admin.sock');
  }
  get queueSocket(): string {
    return join(this.dir, 'run', 'sa1', 'queue.sock');
  }

  /**
   * `config`: a config file's text (TOML) the daemon starts with (and hands to its upgrades). `nodeArgs`: Node
   * options the daemon is started with (`node <nodeArgs> devlease daemon …`).
   */
  static async start(
    env: Record<string, string> = {},
    opts: { config?: string; nodeArgs?: string[] } = {},
  ): Promise<UpgradeRig> {
    const rig = new UpgradeRig();
    rig.nodeArgs = opts.nodeArgs ?? [];
    if (opts.config !== undefined) {
      rig.configFile = join(rig.dir, 'devlease.toml');
      writeFileSync(rig.configFile, opts.config);
    }
    rig.sim = await spawnSimulator({ socketPath: join(rig.dir, 'sim.sock'), numQueues: 8 });
    await rig.startDaemon(env);
    return rig;
  }

  configFile: string | null = null;
  nodeArgs: string[] = [];

  /** Start a `devlease daemon` on the rig's simulator and rundir (again: a restart after a broker died). */
  async startDaemon(env: Record<string, string> = {}): Promise<void> {
    this.daemon = spawn(
      process.execPath,
      [
        ...this.nodeArgs,
        DEVLEASE_BIN,
        'daemon',
        '--device',
        `vfio-user:${this.sim.socketPath}`,
        '--rundir',
        join(this.dir, 'run'),
        ...(this.configFile ? ['--config', this.configFile] : []),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } },
    );
    const daemon = this.daemon;
    const readies = () => this.events().filter((e) => e.event === 'ready' && !e.upgraded).length;
    const before = readies();
    daemon.stdout!.on('data', (d: Buffer) => {
      this.out += d.toString();
    });
    daemon.stderr!.on('data', (d: Buffer) => {
      this.out += d.toString();
    });
    await until('the daemon to be ready', () => readies() > before, 30_000);
  }

  /**
   * Where the metrics endpoint listens, as the first daemon's 'ready' line says: for `[metrics] listen` on port
   * 0, HOST:PORT with the port the kernel gave it (an upgrade's new broker serves the same socket).
   */
  metricsEndpoint(): string {
    const ready = this.events().find((e) => e.event === 'ready' && !e.upgraded);
    if (typeof ready?.metrics !== 'string') throw new Error(`no metrics endpoint in the daemon's ready line`);
    return ready.metrics;
  }

  events(): Record<string, any>[] {
    return this.out
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => {
        try {
          return JSON.parse(l) as Record<string, any>;
        } catch {
          return {};
        }
      });
  }

  request(req: Record<string, unknown>, timeoutMs = 60_000): Promise<any> {
    return adminRequest(this.admin, req, timeoutMs);
  }

  async addClient(): Promise<ChildProcess> {
    const c = fork(CLIENT, [this.queueSocket], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.clients.push(c);
    await new Promise<void>((resolve, reject) => {
      c.once('message', () => resolve());
      c.once('exit', (code) => reject(new Error(`client exited (${code}) before its lease`)));
    });
    return c;
  }

  /** Resolves once every client has done `n` more copies. */
  async progress(n = 20): Promise<void> {
    const ask = (c: ChildProcess) =>
      new Promise<number>((resolve) => {
        c.once('message', (m: any) => resolve(m.progress));
        c.send({ op: 'progress' });
      });
    const start = await Promise.all(this.clients.map(ask));
    await until(
      'every client to make progress',
      async () => {
        const now = await Promise.all(this.clients.map(ask));
        return now.every((v, i) => v >= start[i]! + n);
      },
      60_000,
    );
  }

  /**
   * Every client rests between copies until resumeClients(): nothing in flight through the broker, and the broker's
   * turn that answered each client's last request has ended (upgrade-client.ts).
   */
  async pauseClients(): Promise<void> {
    await Promise.all(
      this.clients.map(
        (c) =>
          new Promise<void>((resolve) => {
            const on = (m: any) => {
              if (m.paused) {
                c.off('message', on);
                resolve();
              }
            };
            c.on('message', on);
            c.send({ op: 'pause' });
          }),
      ),
    );
  }

  resumeClients(): void {
    for (const c of this.clients) c.send({ op: 'resume' });
  }

  /** Stops every client, and checks that none saw an error or a disconnect. */
  async stopClientsUnharmed(): Promise<ClientStats[]> {
    const stats = await this.stopClients();
    for (const s of stats) {
      assert.deepEqual(s.errors, [], `client of lease ${s.leaseId} saw errors`);
      assert.equal(s.disconnects, 0, `client of lease ${s.leaseId} was disconnected`);
    }
    return stats;
  }

  async stopClients(): Promise<ClientStats[]> {
    return Promise.all(
      this.clients.map(
        (c) =>
          new Promise<ClientStats>((resolve, reject) => {
            c.on('message', (m: any) => {
              if (m.stats) resolve(m.stats);
            });
            c.once('exit', (code) => reject(new Error(`client exited (${code}) without its stats`)));
            c.send({ op: 'stop' });
          }),
      ),
    );
  }

  /** The broker serving now (after upgrades, not the daemon this rig spawned). */
  async brokerPid(): Promise<number> {
    return ((await this.request({ op: 'status' })) as { pid: number }).pid;
  }

  /**
   * A pidfd of the broker serving now, for a signal to it: not its pid, which is another process's once the
   * broker is reaped (a broker an upgrade started is not this process's child, so no handle tells when).
   */
  brokerPidfd(): Promise<PidFd> {
    return confirmedPidfd(() => this.brokerPid(), 'the broker serving now');
  }

  async close(): Promise<void> {
    for (const c of this.clients) await stopChild(c);
    // The broker serving now may be a process the upgrades started: stopped through its pidfd.
    let broker: PidFd | null = null;
    try {
      broker = await this.brokerPidfd();
    } catch {
      // no broker answers: nothing of ours left to stop
    }
    if (broker !== null) {
      const b = broker;
      try {
        if (b.pid !== this.daemon.pid && signal(b, 'SIGTERM'))
          await until('the upgraded broker to exit', () => !b.isAlive(), 30_000);
      } finally {
        b.close();
      }
    }
    await stopChild(this.daemon);
    await this.sim.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Whether a pid is taken; 'T' once the process stopped itself (SIGSTOP: DEVLEASE_TEST_UPGRADE_OLD_STOP). */
export { alive, stopped };

/** A process's open descriptors, counted by kind (socket, anon_inode:[eventfd], /memfd:…, pipe, …). */
export function fdKinds(pid: number): Map<string, number> {
  const kinds = new Map<string, number>();
  for (const name of readdirSync(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${name}`);
    } catch {
      continue; // closed meanwhile
    }
    const kind = target.replace(/:\[\d+\]$/, '').replace(/ \(deleted\)$/, '');
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
  }
  return kinds;
}

export function total(kinds: Map<string, number>): number {
  let n = 0;
  for (const v of kinds.values()) n += v;
  return n;
}
