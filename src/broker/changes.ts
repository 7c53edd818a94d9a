// A broker's changes of itself, and what keeps them apart: a reload (reload.ts: the config file and policy
// module read again, applied to new requests and to the leases held) and an upgrade (handover/upgrade.ts: a
// new broker process takes everything over). Reloads run one after another; one upgrade at a time; and never
// one while the other runs — a reload's revokes landing between the state sent and the commit would leave
// the new broker holding a lease as it was, its client told it is revoked.
import { DevleaseError } from '../errors.js';
import type { Broker } from './broker.js';
import type { BrokerParts } from './handover/collect.js';
import { type UpgradeOptions, type UpgradeOutcome, upgrade } from './handover/upgrade.js';
import type { PolicyModule } from './policy.js';
import { type ConfigSource, type ReloadOutcome, refuseReload, reload } from './reload.js';

export class BrokerChanges {
  readonly #broker: Broker;
  readonly #parts: () => BrokerParts;
  /** The config file, for reload(); without it a reload is refused. */
  readonly #configSource: ConfigSource | null;
  /** Hooks given in code (BrokerOptions.policyModule), kept through reloads. */
  readonly #codePolicy: PolicyModule | null;
  #upgrading: Promise<UpgradeOutcome> | null = null;
  /**
   * The last reload asked for, null once it has ended: each runs after the one before, so null means none runs
   * (an upgrade waits for none: it is refused while one runs).
   */
  #reloading: Promise<ReloadOutcome> | null = null;

  constructor(
    broker: Broker,
    parts: () => BrokerParts,
    configSource: ConfigSource | null,
    codePolicy: PolicyModule | null,
  ) {
    this.#broker = broker;
    this.#parts = parts;
    this.#configSource = configSource;
    this.#codePolicy = codePolicy;
  }

  /** The upgrade in progress (upgrade()'s promise), or null: tells a caller whether its upgrade() was taken. */
  get upgrading(): Promise<UpgradeOutcome> | null {
    return this.#upgrading;
  }

  /** Broker.upgrade(): refused (EBUSY) while an upgrade or a reload runs. */
  upgrade(opts: UpgradeOptions): Promise<UpgradeOutcome> {
    if (this.#upgrading)
      return Promise.reject(new DevleaseError('EBUSY', 'an upgrade is already in progress'));
    // A reload's revokes must not land between the state sent and the commit (the new broker would hold the
    // lease as it was, its client told it is revoked).
    if (this.#reloading)
      return Promise.reject(new DevleaseError('EBUSY', 'a reload is in progress: upgrade once it has ended'));
    const b = this.#broker;
    const p = upgrade(
      b,
      this.#parts(),
      {
        startedAt: b.startedAt,
        upgrades: b.upgrades,
        configPath: this.#configSource?.path ?? null,
        // The new broker's rundir: the one given over the config file's, if any; with no config file, the one
        // this broker runs with (--rundir or the default). It was null then, so a broker started with --rundir
        // alone was upgraded into the default rundir: its sockets (inherited) still served, but it made the
        // default's socket folder, said it served there, and where that folder could not be made (a non-root
        // broker and /run/devlease) the upgrade failed.
        rundir: this.#configSource
          ? ((this.#configSource.overrides as { rundir?: string } | undefined)?.rundir ?? null)
          : b.config.rundir,
      },
      opts,
    );
    this.#upgrading = p;
    void p.then(
      () => {},
      () => {
        this.#upgrading = null;
      },
    );
    return p;
  }

  /** Broker.reload(): after the reload before it; refused (EBUSY) while an upgrade runs. */
  async reload(): Promise<ReloadOutcome> {
    const b = this.#broker;
    // The audit file is reopened at its path (after a rotation renamed it), whatever becomes of the reload.
    b.audit.reopen();
    const source = this.#configSource;
    if (!source)
      throw new DevleaseError('EINVAL', 'the broker was started without a config file: nothing to reload');
    const target = {
      config: b.config,
      leases: b.leases,
      audit: b.audit,
      codeModule: this.#codePolicy,
      identity: b.configIdentity,
      log: b.log,
    };
    // Its revokes could land after the state went to the new broker, which would hold the leases as they were.
    if (this.#upgrading) {
      const why =
        'an upgrade is in progress: reload once it has ended (a new broker reads the config file anew)';
      throw refuseReload(source, target, 'EBUSY', why);
    }
    const run = async (): Promise<ReloadOutcome> => {
      await this.#reloading?.catch(() => {});
      return reload(source, target);
    };
    const p: Promise<ReloadOutcome> = run().finally(() => {
      if (this.#reloading === p) this.#reloading = null;
    });
    this.#reloading = p;
    return p;
  }
}
