// submit()'s descriptors awaiting their completions (sa1-queue.ts): one promise each, kept in submission
// order (the device completes a queue in order), settled as poll() collects them, failed together when
// the queue stops, is reset or closes, or when the oldest is overdue. post()ed descriptors have no entry.
// The pump collects them: a brief spin, then the queue's interrupt or a 1 ms timer, until none is left.

import { constants as osConstants } from 'node:os';
import { STATUS_NAME } from '../hw/sa1/regs.js';
import { monotonicMs } from '../sys/clock.js';
import { leaseError } from './errors.js';
import type { Lease } from './lease.js';
import { type Completion, type Descriptor, DeviceStatusError } from './sa1-descriptor.js';

interface Pending {
  resolve(c: Completion): void;
  reject(e: Error): void;
  /** What was submitted, for a timeout's message. */
  opcode: Descriptor['opcode'];
  /** monotonicMs() past which the completion is overdue. */
  deadline: number;
}

/** What the pump asks of the queue whose completions it collects (Sa1Queue). */
export interface CompletionSource {
  readonly lease: Lease;
  /** The code that put the queue in ERROR, or 0 while it runs. */
  readonly error: number;
  /** Consume every completion written; returns how many (settling this table's promises). */
  poll(): number;
}

export class PendingCompletions {
  /** By tag (a number: tags stay far below 2^53, and number keys hash faster than bigints). */
  readonly #byTag = new Map<number, Pending>();

  #pumping = false;

  /** A pump() is running. */
  get pumping(): boolean {
    return this.#pumping;
  }

  get size(): number {
    return this.#byTag.size;
  }

  /** The promise for descriptor `tag`'s completion, overdue at `deadline` (monotonicMs). */
  add(tag: number, opcode: Descriptor['opcode'], deadline: number): Promise<Completion> {
    return new Promise<Completion>((resolve, reject) =>
      this.#byTag.set(tag, { resolve, reject, opcode, deadline }),
    );
  }

  /** Settles the promise of tag `key`, if one waits: resolved when OK, else rejected with DeviceStatusError. */
  settle(key: number, c: Completion): void {
    const p = this.#byTag.get(key);
    if (!p) return;
    this.#byTag.delete(key);
    if (c.status === 'OK') p.resolve(c);
    else p.reject(new DeviceStatusError(c));
  }

  /**
   * The error to fail everything with when the oldest pending descriptor is overdue (ETIMEDOUT, naming the
   * queue, the lease and the descriptor), or null while it is not.
   */
  overdue(timeoutMs: number, queue: number | null, lease: string): Error | null {
    const first = this.#byTag.entries().next();
    if (first.done) return null;
    const [tag, p] = first.value;
    if (monotonicMs() < p.deadline) return null;
    const more = this.#byTag.size > 1 ? ` (and ${this.#byTag.size - 1} submitted after it)` : '';
    return Object.assign(
      leaseError(
        'ETIMEDOUT',
        `SA-1 queue ${queue ?? '?'} (lease ${lease}): descriptor tag ${tag} (${p.opcode}) did not complete within ${timeoutMs} ms${more}; the device may be hung or frozen: reset() the queue or lease again`,
      ),
      { errno: osConstants.errno.ETIMEDOUT },
    );
  }

  /**
   * Collect `q`'s completions until none of this table's is pending: spin `spinMs`, then sleep until an
   * interrupt, looking again at least every millisecond (a descriptor without INTR). `fail` fails everything
   * in flight: when the oldest is overdue, the queue enters ERROR, or the lease closes.
   */
  async pump(
    q: CompletionSource,
    spinMs: number,
    timeoutMs: number,
    fail: (err: Error) => void,
  ): Promise<void> {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      while (this.#byTag.size && !q.lease.closed) {
        const end = monotonicMs() + spinMs;
        while (!q.poll() && monotonicMs() < end) {
          /* brief spin: the device answers in microseconds */
        }
        if (!this.#byTag.size) break;
        const late = this.overdue(timeoutMs, q.lease.info.queue, q.lease.info.lease);
        if (late) {
          fail(late);
          return;
        }
        if (q.error) {
          // The faulting descriptor's completion may land just after Q_ERROR: collect it first, so it is
          // reported with its own status; whatever is still pending will never complete.
          q.poll();
          fail(leaseError('EIO', `queue entered ERROR: ${STATUS_NAME[q.error] ?? q.error}`));
          return;
        }
        await Promise.race([q.lease.nextInterrupt(), new Promise((r) => setTimeout(r, 1))]).catch(
          () => undefined,
        );
      }
      // Only with descriptors still in flight. A pump asleep after another poll() (spinUntil) took the last
      // one may wake to a closed lease with nothing to fail: the error, its stack captured, cost ~14 µs of
      // such a close (issue 16).
      if (q.lease.closed && this.#byTag.size)
        fail(leaseError('ERR_DEVLEASE_CLOSED', 'the lease closed with descriptors in flight'));
    } finally {
      this.#pumping = false;
    }
  }

  /**
   * Rejects every pending promise with the error `why()` builds and forgets them. Built only when something is
   * pending: a queue closed with nothing in flight (every lease's close) would otherwise capture a stack trace
   * nobody reads, ~3–4 µs warm (issue 16, fortieth pass).
   */
  failAll(why: () => Error): void {
    if (this.#byTag.size === 0) return;
    const err = why();
    for (const p of this.#byTag.values()) p.reject(err);
    this.#byTag.clear();
  }
}
