// What the broker reads off the device for operators, never on a client's hot path: at a metrics scrape or
// a `devlease top` refresh. SA-1 keeps per-queue counters in QCFG (Q_COMPLETED: descriptors completed,
// Q_BYTES: bytes moved; datasheet §2.2), so a lease's work is the counters of its queue. The device's
// HEARTBEAT register advances while its firmware runs: the sampler notes when it last saw it change.
//
// Devices without such registers (edu, generic) give no counters and no heartbeat: null, not zero.
import type { Device } from '../../device/device.js';
import type { Driver } from '../../drivers/driver.js';
import { BAR0, Q, qcfg, REG } from '../../hw/sa1/regs.js';
import { withTimeout } from '../../util/with-timeout.js';
import type { Lease } from '../lease.js';

export interface LeaseCounters {
  /** Descriptors the lease's queue completed since it was granted (the queue is reset at grant). */
  completed: bigint;
  bytes: bigint;
}

/** The whole sample's deadline: under `devlease top`'s 5 s wait for its snapshot, and a scraper's (10 s default). */
export const SAMPLE_DEADLINE_MS = 2000;
/** Leases read at once: each read is two requests on the device's one connection. */
export const SAMPLE_CONCURRENCY = 8;

export interface CountersSample {
  counters: Map<string, LeaseCounters>;
  /** The leases whose counters did not arrive and why (code: ETIMEDOUT at the deadline), or null. */
  unavailable: { leases: string[]; code: string; error: string } | null;
}

export class DeviceSampler {
  readonly #device: Device;
  readonly #driver: Driver;
  #heartbeat: { value: number; changedAt: number } | null = null;

  constructor(device: Device, driver: Driver) {
    this.#device = device;
    this.#driver = driver;
  }

  get #sa1(): boolean {
    return this.#driver.name === 'sa1';
  }

  /**
   * The queue counters of every SA-1 queue lease of `leases` that answers in time. Read `concurrency` leases at a
   * time, under one deadline for them all: read one after another, a device that stopped answering made a scrape
   * (or a `devlease top` refresh) take leases × the device's request timeout, and its caller gave up first.
   * Reads still out at the deadline are left to finish unheard; what arrived is answered, and `unavailable`
   * names the leases without counters and why.
   */
  async sampleLeases(
    leases: readonly Lease[],
    deadlineMs = SAMPLE_DEADLINE_MS,
    concurrency = SAMPLE_CONCURRENCY,
  ): Promise<CountersSample> {
    const counters = new Map<string, LeaseCounters>();
    const todo = this.#sa1 ? leases.filter((l) => l.resources.queue !== null && l.live) : [];
    let first: Error | null = null;
    let next = 0;
    let expired = false;
    const worker = async () => {
      while (!expired && next < todo.length) {
        const l = todo[next++]!;
        const q = l.resources.queue!;
        try {
          const [completed, bytes] = await Promise.all([
            this.#device.read64(BAR0, qcfg(q, Q.COMPLETED)),
            this.#device.read64(BAR0, qcfg(q, Q.BYTES)),
          ]);
          if (!expired) counters.set(l.id, { completed, bytes });
        } catch (err) {
          first ??= err as Error; // the device connection is going (the broker handles that), or a read timed out
        }
      }
    };
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        expired = true;
        resolve();
      }, deadlineMs);
    });
    await Promise.race([
      Promise.all(Array.from({ length: Math.min(concurrency, todo.length) }, worker)),
      deadline,
    ]);
    clearTimeout(timer);
    const missing = todo.filter((l) => !counters.has(l.id)).map((l) => l.id);
    if (missing.length === 0) return { counters, unavailable: null };
    const failed = first as Error | null;
    return {
      counters,
      unavailable: {
        leases: missing,
        code: expired ? 'ETIMEDOUT' : ((failed as { code?: string } | null)?.code ?? 'EIO'),
        error: expired
          ? `the device did not answer the counter reads within the scrape's ${deadlineMs} ms${failed ? ` (${failed.message})` : ''}`
          : `reading the counters failed: ${failed?.message}`,
      },
    };
  }

  /**
   * Seconds since HEARTBEAT was last seen to change (0 when it changed since the previous sample), or null
   * when the device has none, or did not answer and was never read. The first sample counts as a change.
   */
  async heartbeatAgeSeconds(now = Date.now(), deadlineMs = SAMPLE_DEADLINE_MS): Promise<number | null> {
    if (!this.#sa1) return null;
    let value: number;
    try {
      // Bounded as the counters are (sampleLeases): the read, unanswered, took the device's request timeout.
      value = await withTimeout(
        this.#device.read32(BAR0, REG.HEARTBEAT),
        deadlineMs,
        () => 'no answer in time',
      );
    } catch {
      // A device that does not answer was not seen to change either: the age grows from the last change seen.
      // (It was null, which the metric showed as 0, a heartbeat just seen, for as long as the device was stuck.)
      return this.#heartbeat === null ? null : (now - this.#heartbeat.changedAt) / 1000;
    }
    if (this.#heartbeat === null || this.#heartbeat.value !== value)
      this.#heartbeat = { value, changedAt: now };
    return (now - this.#heartbeat.changedAt) / 1000;
  }
}
