// The broker's Prometheus metrics (prom-client), in a registry of their own.
//
// Events are counted as they happen, from the audit log's records (the same decisions the audit log
// records: grants, denials, revocations, reclaims, quarantines, hangs, recoveries) and the driver's fault
// records; device command latency from the timed Device (device-timing.ts). What is a state rather than an
// event — leases by kind and state, per-lease device counters, heartbeat age — is read when scraped.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { DeviceFault } from '../../drivers/driver.js';
import type { AuditRecord } from '../audit.js';
import type { Broker } from '../broker.js';
import type { LeaseState } from '../lease.js';
import { type CountersSample, DeviceSampler } from './device-sampler.js';
import { timeDeviceCommands } from './device-timing.js';

const STATES: LeaseState[] = ['active', 'revoking', 'reclaiming', 'awaiting-release', 'quarantined'];

/** A denial's errno code → the reason class it is counted under. */
const DENIAL_CLASS: Record<string, string> = {
  EACCES: 'policy',
  ENOSPC: 'no-resources',
  EINVAL: 'bad-request',
  ENODEV: 'no-device',
  EAGAIN: 'recovering',
  EBUSY: 'draining',
  device: 'device-refused',
};

/** Why a lease was reclaimed, from the reason the lease table gives. */
export function reclaimCause(reason: string): string {
  if (/^(revoked with no deadline|deadline of)/.test(reason)) return 'revoke';
  if (/^device lost/.test(reason)) return 'device-lost';
  if (/^(device-hang|device-reset|device-error|owner-reset)/.test(reason)) return 'recovery';
  if (/^broker shutting down/.test(reason)) return 'shutdown';
  return 'client'; // the session ended: the client closed, hung up or exited
}

export class BrokerMetrics {
  readonly registry = new Registry();
  readonly #sampler: DeviceSampler;
  readonly #undo: (() => void)[] = [];

  constructor(broker: Broker) {
    this.#sampler = new DeviceSampler(broker.device, broker.driver);
    const r = [this.registry];
    const device = broker.config.deviceName;
    this.registry.setDefaultLabels({ device });

    const grants = new Counter({
      name: 'devlease_grants_total',
      help: 'Leases granted.',
      labelNames: ['kind'],
      registers: r,
    });
    const denials = new Counter({
      name: 'devlease_denials_total',
      help: 'Lease requests refused, by reason class (policy, no-resources, bad-request, no-device, recovering, draining, device-refused).',
      labelNames: ['kind', 'reason'],
      registers: r,
    });
    const revocations = new Counter({
      name: 'devlease_revocations_total',
      help: 'Owner revocations (notice sent, deadline set).',
      registers: r,
    });
    const reclaims = new Counter({
      name: 'devlease_reclaims_total',
      help: 'Leases reclaimed, by cause (client, revoke, recovery, device-lost, shutdown).',
      labelNames: ['cause'],
      registers: r,
    });
    const quarantines = new Counter({
      name: 'devlease_quarantines_total',
      help: 'Leases quarantined (reclaim could not make their resources safe).',
      registers: r,
    });
    const grantSeconds = new Histogram({
      name: 'devlease_grant_duration_seconds',
      help: 'Time to grant a lease: policy, resources, device programming, slice fds.',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers: r,
    });
    const reclaimSeconds = new Histogram({
      name: 'devlease_reclaim_duration_seconds',
      help: 'Time to reclaim a lease: quiesce, unwire, unmap, revoke or wait for release (until released or quarantined).',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30],
      registers: r,
    });
    const hangs = new Counter({
      name: 'devlease_device_hangs_total',
      help: 'Device hangs detected (heartbeat stopped, or HUNG).',
      registers: r,
    });
    const resets = new Counter({
      name: 'devlease_device_resets_total',
      help: "Device resets behind the broker's back.",
      registers: r,
    });
    const deviceErrors = new Counter({
      name: 'devlease_device_errors_total',
      help: 'Uncorrectable PCIe errors the kernel reported of the device (AER, the VFIO error irq).',
      registers: r,
    });
    const recoveries = new Counter({
      name: 'devlease_device_recoveries_total',
      help: 'Device recoveries that succeeded.',
      registers: r,
    });
    const recoveryFailures = new Counter({
      name: 'devlease_device_recovery_failures_total',
      help: 'Device recoveries that gave up.',
      registers: r,
    });
    const faults = new Counter({
      name: 'devlease_device_faults_total',
      help: 'Fault records the device logged, by code and name.',
      labelNames: ['code', 'name'],
      registers: r,
    });
    const faultsLost = new Counter({
      name: 'devlease_device_faults_lost_total',
      help: "Fault records the device's log overwrote before the broker read them.",
      registers: r,
    });
    const commandSeconds = new Histogram({
      name: 'devlease_device_command_duration_seconds',
      help: "Latency of the broker's commands to the device (register access, DMA map/unmap, interrupt wiring, reset, slices).",
      labelNames: ['command'],
      buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1],
      registers: r,
    });
    const commandErrors = new Counter({
      name: 'devlease_device_command_errors_total',
      help: 'Device commands that failed.',
      labelNames: ['command'],
      registers: r,
    });

    this.#undo.push(
      broker.audit.subscribe((rec: AuditRecord) => {
        const kind = typeof rec.kind === 'string' ? rec.kind : 'unknown';
        switch (rec.event) {
          case 'grant':
            grants.inc({ kind });
            if (typeof rec.ms === 'number') grantSeconds.observe(rec.ms / 1000);
            break;
          case 'deny':
            denials.inc({ kind, reason: DENIAL_CLASS[String(rec.code)] ?? 'other' });
            break;
          case 'revoke':
            revocations.inc();
            break;
          case 'reclaim':
            reclaims.inc({ cause: reclaimCause(String(rec.reason ?? '')) });
            break;
          case 'quarantined':
            quarantines.inc();
            if (typeof rec.ms === 'number') reclaimSeconds.observe(rec.ms / 1000);
            break;
          case 'released':
            if (typeof rec.ms === 'number') reclaimSeconds.observe(rec.ms / 1000);
            break;
          case 'device-hang':
            hangs.inc();
            break;
          case 'device-reset':
            resets.inc();
            break;
          case 'device-error':
            deviceErrors.inc();
            break;
          case 'device-recovered':
            recoveries.inc();
            break;
          case 'recovery-failed':
            recoveryFailures.inc();
            break;
          case 'device-faults-lost':
            if (typeof rec.lost === 'number') faultsLost.inc(rec.lost);
            break;
        }
      }),
    );
    const onFault = (f: DeviceFault) => faults.inc({ code: String(f.code), name: f.name });
    broker.driver.on('fault', onFault);
    this.#undo.push(() => broker.driver.off('fault', onFault));
    this.#undo.push(
      timeDeviceCommands(broker.device, (command, s, failed) => {
        commandSeconds.observe({ command }, s);
        if (failed) commandErrors.inc({ command });
      }),
    );

    // Read at scrape time.
    const sampler = this.#sampler;
    new Gauge({
      name: 'devlease_leases',
      help: 'Leases by kind and state (released leases are gone from the table).',
      labelNames: ['kind', 'state'],
      registers: r,
      collect() {
        this.reset();
        for (const kind of broker.driver.kinds()) for (const state of STATES) this.set({ kind, state }, 0);
        for (const l of broker.leases.all()) this.inc({ kind: l.kind, state: l.state });
      },
    });
    new Counter({
      name: 'devlease_audit_write_errors_total',
      help: 'Audit records the audit file did not take (a full disk, EIO), and audit observers that threw.',
      registers: r,
      collect() {
        this.reset();
        this.inc(broker.audit.writeErrors);
      },
    });
    new Gauge({
      name: 'devlease_device_up',
      help: '1 while the device connection is up and grants are not suspended by a recovery.',
      registers: r,
      collect() {
        this.set(broker.leases.deviceGone || broker.leases.suspended ? 0 : 1);
      },
    });
    new Gauge({
      name: 'devlease_device_heartbeat_age_seconds',
      help: 'Seconds since the device heartbeat was last seen to advance (read at scrape; SA-1).',
      registers: r,
      async collect() {
        // Reset and set in one step after the read, as the per-lease counters below (an overlapping
        // scrape's reset must not land between this one's set and its read of the value).
        const age = broker.leases.deviceGone ? null : await sampler.heartbeatAgeSeconds();
        this.reset();
        // No age known (no heartbeat register, the device gone): no sample. reset() leaves a gauge without
        // labels at 0, which claimed a heartbeat seen this instant.
        if (age !== null) this.set(age);
        else this.remove();
      },
    });
    const leaseLabels = ['lease', 'kind', 'pid', 'exe'];
    const labelsOf = (l: { id: string; kind: string; ctx: { pid: number; exe: string | null } }) => ({
      lease: l.id,
      kind: l.kind,
      pid: String(l.ctx.pid),
      exe: l.ctx.exe ?? '',
    });
    // Both per-lease counters come from one read of the device per lease, shared by the two collects.
    // Read concurrently under one deadline (DeviceSampler.sampleLeases): a scrape answers with what arrived.
    let sample: Promise<CountersSample> | null = null;
    const sampleOnce = () => {
      sample ??= (async (): Promise<CountersSample> =>
        broker.leases.deviceGone
          ? { counters: new Map(), unavailable: null }
          : sampler.sampleLeases(broker.leases.all()))().finally(() => setImmediate(() => (sample = null)));
      return sample;
    };
    // Counters per lease (they only grow while the lease lives; a new lease starts a new series).
    // Their collects reset and set in one synchronous step after the shared sample: resetting before the
    // await let two overlapping scrapes each add the sample to the same series, so both reported it doubled.
    new Counter({
      name: 'devlease_lease_completed_total',
      help: "Descriptors the lease's queue has completed since the grant (SA-1 QCFG Q_COMPLETED; read at scrape).",
      labelNames: leaseLabels,
      registers: r,
      async collect() {
        const m = (await sampleOnce()).counters;
        this.reset(); // after the await: see the comment above
        for (const l of broker.leases.all()) {
          const c = m.get(l.id);
          if (c) this.inc(labelsOf(l), Number(c.completed));
        }
      },
    });
    new Counter({
      name: 'devlease_lease_bytes_total',
      help: "Bytes the lease's queue has moved since the grant (SA-1 QCFG Q_BYTES; read at scrape).",
      labelNames: leaseLabels,
      registers: r,
      async collect() {
        const m = (await sampleOnce()).counters;
        this.reset(); // after the await: see the comment above
        for (const l of broker.leases.all()) {
          const c = m.get(l.id);
          if (c) this.inc(labelsOf(l), Number(c.bytes));
        }
      },
    });
    new Gauge({
      name: 'devlease_lease_counters_unavailable',
      help: 'Leases whose device counters did not arrive at this scrape (their series are absent), by error code.',
      labelNames: ['code'],
      registers: r,
      async collect() {
        const u = (await sampleOnce()).unavailable;
        this.reset(); // after the await: see the comment above
        if (u) this.set({ code: u.code }, u.leases.length);
        else this.set(0);
      },
    });
  }

  /** The exposition text (what a scrape returns). */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  close(): void {
    for (const u of this.#undo.splice(0)) u();
    this.registry.clear();
  }
}
