// What `devlease top` shows, in one admin request ({"op":"top"}): every lease with its holder and its
// device counters (read now, off the hot path), the device's health, and the latest audit records. The
// client computes rates from two snapshots; the broker keeps no per-viewer state beyond the heartbeat.
import type { Broker } from '../broker.js';
import { DeviceSampler } from './device-sampler.js';

const RECENT_AUDIT = 20;

export class TopSnapshot {
  readonly #broker: Broker;
  readonly #sampler: DeviceSampler;

  constructor(broker: Broker) {
    this.#broker = broker;
    this.#sampler = new DeviceSampler(broker.device, broker.driver);
  }

  async snapshot(): Promise<Record<string, unknown>> {
    const b = this.#broker;
    const gone = b.leases.deviceGone !== null;
    const all = b.leases.all();
    // Counters and heartbeat read together, each under the sample's one deadline (device-sampler.ts): a device
    // that does not answer makes the view late by that deadline, not by leases × its request timeout.
    const [sample, heartbeatAgeSeconds] = gone
      ? [{ counters: new Map(), unavailable: null }, null]
      : await Promise.all([this.#sampler.sampleLeases(all), this.#sampler.heartbeatAgeSeconds()]);
    const leases = all.map((l) => {
      const c = sample.counters.get(l.id);
      return {
        ...l.summary(),
        completed: c ? c.completed.toString() : null,
        bytes: c ? c.bytes.toString() : null,
      };
    });
    // Not status(): it reads the driver's state off the device, so a device that did not answer failed the whole
    // view (ETIMEDOUT), just when its health is what the operator looks for.
    const recovery = b.recoveryStatus();
    return {
      time: Date.now(),
      device: b.config.deviceName,
      driver: b.driver.name,
      connection: b.deviceConnection(),
      recovery,
      suspended: b.leases.suspended,
      draining: b.leases.draining,
      heartbeatAgeSeconds,
      leases,
      countersUnavailable: sample.unavailable,
      audit: b.audit.recent.slice(-RECENT_AUDIT),
    };
  }
}
