// The broker's hold on its device connection: up, or gone since when and why.
// A vfio-user server that dies and comes back is normal (a restarted
// backend), so while the device is gone the broker keeps trying to connect
// again — first after `initialMs`, the wait doubling up to `maxMs` — and,
// once a connection answers as the same device, boots it with the driver.

import { BackoffSleep } from '../util/backoff-sleep.js';
import type { BrokerConfig } from './config.js';

export interface DeviceConnectionStatus {
  state: 'up' | 'gone';
  /** When the state last changed (ISO time). */
  since: string;
  /** Why it went, then why the last attempt to come back failed; null while up. */
  lastError: string | null;
  /** Attempts to reconnect since it went. */
  attempts: number;
  /** When the next attempt is due (ISO time), while gone and waiting. */
  nextAttemptAt: string | null;
}

export interface DeviceLinkHooks {
  /** Connect again and boot the device: resolves when it is ready to lease, rejects with why not. */
  attempt(): Promise<void>;
  /** An attempt failed: undo what it left half done (timers, eventfds armed by a boot that died midway). */
  failed(err: Error): void;
  log(msg: string): void;
}

export class DeviceLink {
  readonly #backoff: BrokerConfig['reconnect'];
  readonly #hooks: DeviceLinkHooks;
  #status: DeviceConnectionStatus = {
    state: 'up',
    since: new Date().toISOString(),
    lastError: null,
    attempts: 0,
    nextAttemptAt: null,
  };
  #closed = false;
  readonly #pause = new BackoffSleep();
  #running: Promise<boolean> | null = null;

  constructor(backoff: BrokerConfig['reconnect'], hooks: DeviceLinkHooks) {
    this.#backoff = backoff;
    this.#hooks = hooks;
  }

  get gone(): boolean {
    return this.#status.state === 'gone';
  }

  status(): DeviceConnectionStatus {
    return { ...this.#status };
  }

  /** The connection is lost (idempotent while gone). */
  lost(reason: string): void {
    if (this.gone) return;
    this.#status = {
      state: 'gone',
      since: new Date().toISOString(),
      lastError: reason,
      attempts: 0,
      nextAttemptAt: null,
    };
  }

  /** Attempt until the device is back (true) or the link is closed (false). One loop at a time. */
  reconnect(): Promise<boolean> {
    this.#running ??= this.#loop().finally(() => {
      this.#running = null;
    });
    return this.#running;
  }

  async #loop(): Promise<boolean> {
    let delay = this.#backoff.initialMs;
    let lastLogged = '';
    while (!this.#closed) {
      await this.#sleep(delay);
      if (this.#closed) return false;
      this.#status.attempts++;
      try {
        await this.#hooks.attempt();
        if (this.#closed) return false;
        this.#status = {
          state: 'up',
          since: new Date().toISOString(),
          lastError: null,
          attempts: this.#status.attempts,
          nextAttemptAt: null,
        };
        return true;
      } catch (err) {
        const msg = (err as Error).message;
        this.#status.lastError = msg;
        this.#hooks.failed(err as Error);
        // One line per new reason, not one per attempt: a server that stays away must not flood the log.
        if (msg !== lastLogged) this.#hooks.log(`reconnect attempt ${this.#status.attempts}: ${msg}`);
        lastLogged = msg;
        delay = Math.min(delay * 2, this.#backoff.maxMs);
      }
    }
    return false;
  }

  async #sleep(ms: number): Promise<void> {
    const wait = this.#pause.sleep(ms);
    this.#status.nextAttemptAt = this.#pause.nextAttemptAt;
    await wait;
    this.#status.nextAttemptAt = null;
  }

  /** Stop trying: a pending wait ends now; an attempt in progress is awaited (its calls are bounded). */
  async close(): Promise<void> {
    this.#closed = true;
    this.#pause.wake();
    await this.#running;
  }
}
