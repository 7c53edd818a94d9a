// A lease's interrupt vectors (MSI-X): one eventfd per vector, wired to the lease's device with one
// SET_IRQS, and the one shared promise for "the next interrupt" that Sa1Queue's pump waits on. The lease
// (lease.ts) owns this and closes it with itself; its notices (ERR, REQ, devlease's notice irq) stay there.

import { EventFd } from '../sys/eventfd.js';
import {
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_PCI_MSIX_IRQ_INDEX,
} from '../vfio/uapi/vfio.js';
import type { VfioUserClient } from '../vfio/user/client.js';
import { leaseError } from './errors.js';

export class LeaseVectors {
  readonly #fds: EventFd[] = [];
  /** One shared promise for "the next interrupt", however many wait on it. */
  #next: { promise: Promise<number>; resolve(v: number): void; reject(e: Error): void } | null = null;
  /** Called for every interrupt after the waiters are woken (the lease emits 'interrupt'). */
  readonly #onInterrupt: (vector: number, count: bigint) => void;

  constructor(onInterrupt: (vector: number, count: bigint) => void) {
    this.#onInterrupt = onInterrupt;
  }

  /**
   * Makes `count` eventfds and sends their SET_IRQS (none for 0 vectors), pushing its reply's promise onto
   * `calls`. An eventfd or its watch refused (ENOMEM, EMFILE) throws; those made so far are closed by close().
   */
  wire(client: VfioUserClient, count: number, calls: Promise<unknown>[]): void {
    for (let v = 0; v < count; v++) {
      const efd = new EventFd();
      this.#fds.push(efd);
      efd.onReadable((n) => this.#interrupt(v, n));
    }
    if (this.#fds.length) {
      calls.push(
        client.setIrqs({
          flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
          index: VFIO_PCI_MSIX_IRQ_INDEX,
          start: 0,
          count: this.#fds.length,
          fds: this.#fds.map((e) => e.fd),
        }),
      );
    }
  }

  /** The next interrupt on any vector (the lease refuses once closed, before asking). */
  next(): Promise<number> {
    if (!this.#next) {
      let resolve!: (v: number) => void;
      let reject!: (e: Error) => void;
      const promise = new Promise<number>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      promise.catch(() => undefined); // nobody may be listening when the lease closes
      this.#next = { promise, resolve, reject };
    }
    return this.#next.promise;
  }

  #interrupt(vector: number, count: bigint): void {
    const w = this.#next;
    this.#next = null;
    w?.resolve(vector);
    this.#onInterrupt(vector, count);
  }

  /** Closes the eventfds. Idempotent. */
  closeFds(): void {
    for (const e of this.#fds) e.close();
    this.#fds.length = 0;
  }

  /** Fails a pending next() with ERR_DEVLEASE_CLOSED (the lease closed). */
  rejectWaiters(): void {
    this.#next?.reject(closedWhileWaiting());
    this.#next = null;
  }
}

/**
 * The rejection of a pending nextInterrupt() when the lease closes. Built without a stack trace: its frames
 * would be those of close() (not of the waiter, who awaits from elsewhere) and the message says everything,
 * while capturing them cost ~16 µs of every lease a queue helper had waited on (issue 16).
 */
function closedWhileWaiting(): Error {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return leaseError('ERR_DEVLEASE_CLOSED', 'the lease closed while waiting for an interrupt');
  } finally {
    Error.stackTraceLimit = limit;
  }
}
