// The broker: owns one device through a Device, runs its driver, and serves
// one vfio-user socket per lease kind plus an admin socket. Each client
// connection becomes a lease session once its VERSION (carrying the lease
// request) passes policy. Its parts: client-sessions.ts (a connection's
// session and pidfd), device-events.ts (what each driver and device event
// starts), device-loss.ts and recovery-hooks.ts (a device lost, unresponsive
// or recovering), inherited-sockets.ts (systemd's or an upgrading broker's
// sockets), changes.ts (a reload or an upgrade, one at a time: reload.ts,
// handover/).

import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import { type Device, isReconnectable } from '../device/device.js';
import type { DmaBufMmapProbe } from '../device/kernel/dmabuf-probe.js';
import { type Driver, statusOrFailure } from '../drivers/driver.js';
import { loadDriverModule } from '../drivers/load.js';
import { driverFactoryFor } from '../drivers/registry.js';
import { DevleaseError } from '../errors.js';
import type { Fd } from '../sys/fd.js';
import type { ListenSocket } from '../sys/index.js';
import { RateLimitedLog } from '../sys/rate-limited-log.js';
import { VfioUserServer } from '../vfio/user/server.js';
import { AdminServer } from './admin.js';
import { AuditLog } from './audit.js';
import type { DenialLimits } from './audit-denials.js';
import { DirectSlices } from './audit-scan/direct-slices.js';
import { BrokerChanges } from './changes.js';
import { ClientSessions } from './client-sessions.js';
import type { BrokerConfig } from './config.js';
import { wireDeviceEvents } from './device-events.js';
import { type DeviceConnectionStatus, DeviceLink } from './device-link.js';
import { DeviceLoss } from './device-loss.js';
import {
  adoptDriver,
  finishTakeOver,
  inheritedListening,
  inheritedMetrics,
  rebuild,
} from './handover/adopt.js';
import { type BrokerParts, resume } from './handover/collect.js';
import type { BrokerState } from './handover/format.js';
import type { UpgradeOptions, UpgradeOutcome } from './handover/upgrade.js';
import { takeInherited } from './inherited-sockets.js';
import { LeaseTable } from './leases.js';
import { MetricsServer } from './observe/metrics-server.js';
import { checkSocketPaths, giveToGroup, makeSocketDir } from './own-sockets.js';
import { Policy, type PolicyModule } from './policy.js';
import { Recovery, type RecoveryCause, type RecoveryStatus } from './recovery.js';
import { recoveryHooks } from './recovery-hooks.js';
import { type ConfigIdentity, type ConfigSource, configIdentity, type ReloadOutcome } from './reload.js';
import { SliceWatcher } from './slices.js';

export interface BrokerOptions {
  config: BrokerConfig;
  device: Device;
  /** Hooks given in code instead of (or after) config.policy.module. */
  policyModule?: PolicyModule;
  /** The config file, for reload(); without it a reload is refused. */
  configSource?: ConfigSource;
  /** Audit lines also go here (tests, the demo's live view). */
  auditSink?: (line: string) => void;
  /** How repeated denials are collapsed in the audit log (default DENIAL_LIMITS, audit-denials.ts). */
  auditDenials?: DenialLimits;
  log?: (msg: string) => void;
  /**
   * Sockets systemd made (socket activation), by FileDescriptorName=: a lease kind's name or 'admin'. Served
   * as they are (their mode and group are the socket unit's); kinds without one are bound as configured.
   */
  listening?: ListenSocket[];
  /**
   * Take over from a broker being upgraded (handover/): the state it sent and the fds it names. The device
   * is adopted, not booted; listening sockets, sessions and leases come from the state.
   */
  handover?: { state: BrokerState; fds: Fd[] };
}

/**
 * Events: 'hang' (reason), 'reset' (reason), 'device-error' (reason: the kernel reported an AER error), 'recovered';
 * 'device-gone' (reason): the device connection dropped; leases reclaimed, the broker reconnecting;
 * 'device-back': reconnected and booted, leasing again;
 * 'device-lost' (reason): the connection dropped and will not be re-made (a kernel device, or
 * device.reconnect = false): the broker is of no more use (the daemon exits).
 */
export class Broker extends EventEmitter {
  readonly config: BrokerConfig;
  readonly device: Device;
  readonly driver: Driver;
  readonly leases: LeaseTable;
  readonly audit: AuditLog;
  readonly dir: string;
  readonly sockets = new Map<string, string>();
  readonly #servers: VfioUserServer[] = [];
  readonly #watcher = new SliceWatcher();
  /** Client connections and their sessions (client-sessions.ts). */
  readonly #clients: ClientSessions;
  /** When this broker process started, and how many upgrades its lineage has gone through. */
  startedAt = new Date();
  upgrades = 0;
  /** Reloads and upgrades, kept apart (changes.ts). */
  readonly #changes: BrokerChanges;
  /** The upgrade in progress (upgrade()'s promise), or null: tells a caller whether its upgrade() was taken. */
  get upgrading(): Promise<UpgradeOutcome> | null {
    return this.#changes.upgrading;
  }
  #admin: AdminServer | null = null;
  /** The Prometheus endpoint (config [metrics] listen), or null. */
  #metrics: MetricsServer | null = null;
  #closed = false;
  /** Device recoveries, one at a time (hang, reset, the owner's reset). */
  readonly #recovery: Recovery;
  /** A lost or unresponsive device (device-loss.ts). */
  readonly #loss: DeviceLoss;
  readonly #link: DeviceLink;
  readonly log: (msg: string) => void;
  /** The vfio-user servers' own lines (accept failures, protocol errors): at most 5 per kind per 10 s. */
  readonly #serverLog: RateLimitedLog;
  /** The config deciding grants now (the audit log stamps grants and denials with it). */
  readonly configIdentity: ConfigIdentity;
  /** The kernel's answer to "can a dma-buf of a BAR be mmapped?" (kernel devices only). */
  #dmaBufMmap: DmaBufMmapProbe | null = null;

  private constructor(opts: BrokerOptions, driver: Driver, policy: Policy, audit: AuditLog) {
    super();
    this.config = opts.config;
    this.device = opts.device;
    this.driver = driver;
    this.audit = audit;
    this.#changes = new BrokerChanges(
      this,
      () => this.#parts(),
      opts.configSource ?? null,
      opts.policyModule ?? null,
    );
    this.configIdentity = configIdentity(opts.configSource?.path ?? null, opts.config);
    audit.decidedBy = this.configIdentity;
    this.log = opts.log ?? ((m) => process.stderr.write(`devlease broker: ${m}\n`));
    this.leases = new LeaseTable(opts.device, driver, policy, audit, opts.config, this.#watcher);
    this.leases.log = this.log;
    this.dir = join(opts.config.rundir, opts.config.deviceName);
    this.#serverLog = new RateLimitedLog(this.log, { burst: 5, intervalMs: 10_000 });
    audit.onError = (what, err) =>
      this.#serverLog.log(`audit: ${what}`, `audit: ${what}: ${(err as Error)?.message ?? String(err)}`);
    this.#clients = new ClientSessions(opts.config.sockets, this.leases, this.log, this.#serverLog);
    this.#link = new DeviceLink(opts.config.reconnect, {
      attempt: () => this.#reattach(),
      failed: () => this.driver.deviceLost(),
      log: this.log,
    });
    this.#recovery = new Recovery(
      opts.config.recovery,
      recoveryHooks(this, () => this.#closed || this.#link.gone),
    );
    this.#loss = new DeviceLoss(this, this.#link, this.#recovery, {
      closing: () => this.#closed,
      recover: (cause, why) => this.#recover(cause, why),
    });
  }

  static async start(opts: BrokerOptions): Promise<Broker> {
    const { config, device } = opts;
    const own = config.driverModule ? [await loadDriverModule(config.driverModule)] : [];
    const factory = driverFactoryFor(device, own);
    if (!factory) throw new DevleaseError('ENODEV', 'no driver matches the device');
    const audit = new AuditLog(config.auditLog, opts.auditSink, opts.auditDenials);
    let driver: Driver;
    let broker: Broker;
    try {
      const log = (e: Record<string, unknown>) => audit.write({ event: 'policy', ...e });
      const policy = await Policy.load(config.policy, log, opts.policyModule ?? null);
      driver = factory.create(device, config);
      broker = new Broker(opts, driver, policy, audit);
    } catch (err) {
      audit.close(); // nobody else will: no broker owns it yet
      throw err;
    }
    let metricsFd: Fd | null = null;
    try {
      if (opts.handover) {
        const h = opts.handover;
        await adoptDriver(broker, h.state, h.fds);
        await broker.#directSlices();
        await broker.#listen(inheritedListening(h.state, h.fds));
        // Taken before rebuild(), which closes every fd not taken by then.
        metricsFd = inheritedMetrics(h.state, h.fds, config.metrics.listen);
        rebuild(broker, broker.#parts(), h.state, h.fds, (kind, conn, socket, s) =>
          broker.#clients.create(kind, conn, socket, s),
        );
      } else {
        await driver.boot();
        await broker.#directSlices();
        await broker.#listen(opts.listening ?? []);
      }
      if (config.metrics.listen) {
        broker.#metrics = await MetricsServer.start(broker, metricsFd, {
          replaceLive: !!opts.handover && opts.handover.state.metrics === undefined,
        });
        // The new broker of an upgrade reads the device only once the old one commits (takeOver() unholds).
        if (opts.handover) broker.#metrics.hold();
      }
    } catch (err) {
      // The new broker of an upgrade touches nothing on its way out: everything it rebuilt is the old broker's,
      // which carries on (daemon.ts refuses the state and exits at once). A close() here reclaimed the old
      // broker's live leases on the device both talk to (revoked their slices, reset their queues, unmapped
      // their DMA) and unwatched their slices in the inotify instance both share; and with the table held, it
      // waited for good, the old broker with it until its deadline.
      if (!opts.handover) await broker.close();
      throw err;
    }
    wireDeviceEvents(broker, {
      recover: (cause, why) => broker.#recover(cause, why),
      unresponsive: (why) => broker.#loss.unresponsive(why),
      closed: (reason) => broker.#loss.closed(reason),
    });
    audit.write({
      event: 'start',
      device: config.deviceName,
      transport: device.transport,
      path: device.path,
      driver: driver.name,
      config: broker.configIdentity,
    });
    return broker;
  }

  /**
   * A kernel device hands its fd out for audited slices (audit-scan/direct-slices.ts): set up the audit, and ask
   * once whether the kernel could give mmap-able dma-buf slices instead (shown by `devlease status`).
   */
  async #directSlices(): Promise<void> {
    const dev = this.device as Device & { probeDmaBufMmap?: () => Promise<DmaBufMmapProbe> };
    if (dev.probeDmaBufMmap) this.#dmaBufMmap = await dev.probeDmaBufMmap();
    if (!dev.directSlices || !dev.directFd) return;
    this.leases.direct = await DirectSlices.create(dev, this.config.directAudit, {
      audit: this.audit,
      revoke: (id, reason) => {
        try {
          this.leases.revoke(id, 0, reason);
        } catch (err) {
          this.log(`audit: revoking ${id}: ${(err as Error).message}`);
        }
      },
      log: this.log,
    });
  }

  async #listen(listening: ListenSocket[]): Promise<void> {
    const inherited = takeInherited(listening, this.driver.kinds());
    checkSocketPaths(
      this.dir,
      [...this.driver.kinds(), 'admin'].filter((k) => !inherited.get(k)?.path),
    );
    makeSocketDir(this.dir, 0o755);
    for (const kind of this.driver.kinds()) {
      const given = inherited.get(kind);
      const path = given?.path || join(this.dir, `${kind}.sock`);
      const server = VfioUserServer.listen(path, {
        ...(given ? { listening: given.fd } : {}),
        mode: this.config.sockets.mode,
        // DMA maps must be aligned to the configured page (vfio-user pgsizes), which the client library reads.
        pgsizes: this.config.layout.pageSize,
        createDevice: (conn, socket) => this.#clients.create(kind, conn, socket),
        // Keyed without numbers (connection ids, pids): one key per kind of line, whoever causes it.
        log: (m, err) =>
          this.#serverLog.log(m.replace(/\d+/g, 'N'), err ? `${m}: ${(err as Error).message ?? err}` : m),
      });
      // Kept before the chown: a chown that fails fails the start, whose close() must close this server too.
      this.#servers.push(server);
      if (!given && this.config.sockets.group !== null)
        giveToGroup(path, this.config.sockets.group, 'sockets.group');
      this.sockets.set(kind, path);
    }
    const admin = inherited.get('admin');
    this.#admin = new AdminServer(this, admin?.path || join(this.dir, 'admin.sock'), admin?.fd);
  }

  #parts(): BrokerParts {
    return {
      servers: this.#servers,
      admin: this.#admin,
      metrics: this.#metrics,
      sessions: this.#clients.bySocket,
    };
  }

  /**
   * Upgrade in place (handover/upgrade.ts): start the new broker, hand everything over, exit once it took over
   * (the 'handed-over' event; the daemon exits on it), or roll back and carry on. One at a time.
   */
  upgrade(opts: UpgradeOptions = {}): Promise<UpgradeOutcome> {
    return this.#changes.upgrade(opts);
  }

  /**
   * Resume after a takeover's commit (handover/): serve everything that was handed over. `oldGone`: the old
   * broker went away after sending the whole state, without a commit (this one is the only owner left): the
   * `upgrade` request it could not answer is answered from here, before anything else is read.
   */
  takeOver(oldGone = false): void {
    this.#admin?.answerUpgrade(
      oldGone ? { upgraded: true, pid: process.pid, pausedMs: null, oldGone } : null,
    );
    resume(this, this.#parts());
    finishTakeOver(this);
  }

  /** One reconnect attempt: a new connection to the same device, booted by the driver. */
  async #reattach(): Promise<void> {
    if (!isReconnectable(this.device)) throw new Error('the device cannot reconnect');
    await this.device.reconnect();
    await this.driver.boot();
    // Gone again during the boot: its 'close' was taken for a failed attempt's, so fail this one too.
    if (!this.device.connected) throw new Error('the device connection closed again during boot');
  }

  /** The device hung, was reset behind our back or reported an error: recover it (or join the recovery in progress). */
  async #recover(cause: Exclude<RecoveryCause, 'owner-reset'>, why: string): Promise<void> {
    if (this.#closed || this.#link.gone) return;
    await this.#recovery.request(cause, why);
  }

  /**
   * Whole-device reset from the admin: every lease is reclaimed first. Joins a recovery in progress (a hang,
   * another reset) rather than racing it; rejects with the last attempt's error if the device did not recover.
   */
  async resetDevice(): Promise<void> {
    if (this.leases.deviceGone) throw new DevleaseError('ENODEV', this.leases.deviceGone);
    const err = await this.#recovery.request('owner-reset', 'requested by the owner');
    if (err) {
      throw new DevleaseError(
        (err as { code?: string }).code ?? 'EIO',
        `the device did not recover: ${err.message}`,
        {
          cause: err,
        },
      );
    }
  }

  /**
   * Re-read the config file and policy module and apply their policy to new requests; leases the new policy
   * refuses are kept or revoked (policy.on_reload). One at a time: a second call waits for the first, then runs.
   * Rejects with EINVAL, changing nothing, when the new config is refused.
   */
  reload(): Promise<ReloadOutcome> {
    return this.#changes.reload();
  }

  /** Where the Prometheus endpoint listens (HOST:PORT with the bound port, or a socket path), or null. */
  get metricsEndpoint(): string | null {
    return this.#metrics?.endpoint ?? null;
  }

  /** The recovery's state and bound (status()'s `recovery`), without reading the device. */
  recoveryStatus(): RecoveryStatus {
    return this.#recovery.status();
  }

  /** Up, or gone since when and why (and how many reconnect attempts so far). */
  deviceConnection(): DeviceConnectionStatus {
    return this.#link.status();
  }

  async status(): Promise<Record<string, unknown>> {
    return {
      device: this.config.deviceName,
      transport: this.device.transport,
      path: this.device.path,
      ids: this.device.ids,
      deviceConnection: this.#link.status(),
      recovery: this.#recovery.status(),
      // Nothing to read from a device that is not there; one that does not answer: its failure, in the answer.
      driver: this.#link.gone ? { driver: this.driver.name } : await statusOrFailure(this.driver),
      draining: this.leases.draining,
      leases: this.leases.all().length,
      ...(this.leases.direct ? { directSlices: this.leases.direct.status() } : {}),
      ...(this.#dmaBufMmap ? { dmaBufMmap: this.#dmaBufMmap } : {}),
      sockets: Object.fromEntries(this.sockets),
      startedAt: this.startedAt.toISOString(),
      upgrades: this.upgrades,
      // A kernel device taken over in an upgrade: where its pinned pages are charged (device/kernel/handover.ts).
      pinnedAccounting: (this.device as { pinnedAccounting?: string | null }).pinnedAccounting ?? undefined,
      pid: process.pid,
    };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.leases.suspended = 'the broker is shutting down';
    this.#admin?.close();
    await this.#metrics?.close();
    await this.#link.close();
    await this.#recovery.close();
    await this.#loss.losing;
    await Promise.all(this.#servers.map((s) => s.close()));
    await this.leases.reclaimAll('broker shutting down');
    this.leases.direct?.close();
    this.driver.close();
    this.#clients.close();
    this.#serverLog.flush();
    this.#watcher.close();
    this.audit.close();
  }
}
