// When each request of a vfio-user connection runs and when its reply may go: arrival order, with the
// pipelining a model may allow (see Issued in device-model.ts). connection.ts decides what a request does;
// this keeps its place in line. A request with nothing ahead of it skips the line altogether (`clear`).

import * as P from './protocol.js';

/**
 * Requests that may start before the one ahead of them is answered (RequestOrder below). GET_REGION_INFO reads
 * state no earlier request of a session changes (a region's size, flags and fd), so it need not wait for a
 * device relay ahead of it: the client library sends its regions behind the interrupts (so every reply goes in
 * one turn), and its rings' DMA_MAP behind them must still overlap the MSI-X relay (test/broker/acquire-hops).
 * Everything else — DMA_UNMAP above all, which must see every earlier map's result — starts only once every
 * earlier request is answered.
 */
export const PIPELINED = new Set([
  P.VFIO_USER_DMA_MAP,
  P.VFIO_USER_DEVICE_SET_IRQS,
  P.VFIO_USER_DEVICE_GET_REGION_IO_FDS,
  P.VFIO_USER_DEVICE_GET_REGION_INFO,
]);

/** Requests never served out of turn (connection.ts #serveNow): VERSION (its settling holds the queue) and PIPELINED. */
export const QUEUED = new Set([P.VFIO_USER_VERSION, ...PIPELINED]);

/** What a queued request is given: `issued` (pipelined only) and `served` for the model's part. */
export interface Turn {
  issued: (() => void) | undefined;
  served: () => void;
  /** Every earlier request is answered: the reply goes after this. */
  answered: Promise<void>;
}

/**
 * A pipelined request also waits until the request MAX_IN_FLIGHT before it is done in the model, so the model
 * serves at most MAX_IN_FLIGHT requests of a connection at once (replies waiting their turn are bounded by the
 * connection's MAX_PENDING); 8 lets the client library's whole acquire batch (4 SET_IRQS, regions, io fds, the
 * rings' DMA_MAP) through.
 */
export const MAX_IN_FLIGHT = 8;

const settled = (): void => {};

export class RequestOrder {
  /** Requests read and not yet answered. */
  pending = 0;
  /** The tail: resolves once every request so far is answered (and whatever was chained with after()). */
  #tail: Promise<void>;
  /** Resolves when the next pipelined request may start (the last request sent its device calls or ended). */
  #turn: Promise<void> = Promise.resolve();
  /** Whether each of the last MAX_IN_FLIGHT requests is done in the model: a pipelined one waits for the oldest. */
  readonly #recent: Promise<void>[] = [];
  readonly #changed: () => void;
  readonly #failed: (err: unknown) => void;

  /**
   * `first`: what every request waits for (the device's creation); `changed`: `pending` moved; `failed`: a
   * request's handling threw (a bug: the connection should end). The line goes on past such a request — the
   * requests behind it still run and its `pending` is counted off — so that whatever was chained with after()
   * runs and idle() resolves; a rejection left in the tail would strand them all, and the last one would go
   * unhandled.
   */
  constructor(first: Promise<void>, changed: () => void, failed: (err: unknown) => void) {
    this.#tail = first;
    this.#changed = changed;
    this.#failed = failed;
  }

  /** Nothing is waiting or running: a request now may be served at once, out of line. */
  get clear(): boolean {
    return this.pending === 0;
  }

  /**
   * Queue a request: `handle` runs once the requests it waits for allow (every earlier one answered; a
   * pipelined one: the one before it issued, the one MAX_IN_FLIGHT before it served), and its reply waits
   * for `answered`.
   */
  enqueue(pipelined: boolean, handle: (t: Turn) => Promise<void>): void {
    this.pending++;
    this.#changed();
    const answered = this.#tail;
    const depth = this.#recent.length >= MAX_IN_FLIGHT ? this.#recent[0] : undefined;
    // A Promise.all per request was the broker's largest allocation site (issue 16, twenty-eighth pass): one is
    // made only when there are two things to wait for.
    let start: Promise<unknown>;
    if (!pipelined) start = answered;
    else if (depth === undefined) start = this.#turn;
    else start = Promise.all([this.#turn, depth]);
    let release!: () => void;
    this.#turn = new Promise<void>((r) => {
      release = r;
    });
    let served!: () => void;
    const inModel = new Promise<void>((r) => {
      served = r;
    });
    const done = start.then(async () => {
      try {
        await handle({ issued: pipelined ? release : undefined, served, answered });
      } catch (err) {
        this.#report(err);
      } finally {
        release();
        served();
        this.#done();
      }
    });
    // A request that is not pipelined started from the tail (start === answered === #tail), so its `done` settles
    // after every earlier request is answered: it is the new tail by itself.
    this.#track(done, inModel, !pipelined);
  }

  /**
   * A request served out of line whose model answered with a promise: from here it is in flight like a
   * queued one, and every later request waits for it. `finish` sends its reply. `outcome` does not reject (the
   * connection turns a model's failure into an outcome); if it did, or `finish` throws, that is reported as a
   * handle's throw is.
   */
  inFlight<T>(outcome: Promise<T>, finish: (o: T) => void): void {
    this.pending++;
    this.#changed();
    // Settles either way, as a queued request's `served` does: later requests wait on it, not on its result.
    const inModel = outcome.then(settled, settled);
    this.#turn = inModel;
    const done = outcome.then(
      (o) => {
        try {
          finish(o);
        } catch (err) {
          this.#report(err);
        } finally {
          this.#done();
        }
      },
      (err) => {
        this.#report(err);
        this.#done();
      },
    );
    this.#track(done, inModel);
  }

  /** Run `f` once every request so far is answered; later requests wait for it too (a connection's close). */
  after(f: () => Promise<void>): void {
    this.#tail = this.#tail.then(f).catch((err) => this.#report(err));
  }

  /** `failed`, whose own throw must not reject the line either. */
  #report(err: unknown): void {
    try {
      this.#failed(err);
    } catch {
      // nobody else to tell
    }
  }

  /** Resolves once every request read so far has been answered. */
  async idle(): Promise<void> {
    let q: Promise<void>;
    do {
      q = this.#tail;
      await q;
    } while (q !== this.#tail);
  }

  #done(): void {
    this.pending--;
    this.#changed();
  }

  /** `settlesAfterTail`: `done` was chained on the current #tail (see enqueue). */
  #track(done: Promise<void>, inModel: Promise<void>, settlesAfterTail = false): void {
    this.#tail = settlesAfterTail ? done : Promise.all([this.#tail, done]).then(() => undefined);
    this.#recent.push(inModel);
    if (this.#recent.length > MAX_IN_FLIGHT) this.#recent.shift();
  }
}
