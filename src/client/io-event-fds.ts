// The ioeventfds a lease's device offers (VFIO_USER_DEVICE_GET_REGION_IO_FDS; SA-1 rev 2: a queue page's
// doorbell kick at SQ_TAIL), asked for once per region and offset and owned by the lease (lease.ts), which
// closes them when it closes.

import type { Fd } from '../sys/fd.js';
import { native } from '../sys/native.js';
import { readProcText } from '../sys/proc-text.js';
import type { VfioUserClient } from '../vfio/user/client.js';
import { fromCallError } from './errors.js';

const { O_NONBLOCK } = native.constants as Record<string, number>;

/**
 * Why `fd` cannot be a doorbell kick, or null. The kick is a write(2) on the submit path (sa1-queue.ts), to an fd
 * the server chose: a blocking eventfd whose counter stands at 0xfffffffffffffffe would hold that write, and the
 * client with it, for good. It must be an eventfd (only an eventfd's fdinfo has eventfd-count; read with the addon,
 * as the broker's readlink of /proc/self/fd would load node:fs and its streams into every client) whose open file
 * description is non-blocking; that flag is the description's, shared with the server, so it is checked, never
 * set here. Checked once, when the queue is made (sa1-queue-setup.ts): the submit path stays a store and a load.
 * Not for every io fd: libvfio-user's own servers register blocking eventfds, which a client that kicks them
 * itself (Lease.ioEventFd) may take.
 */
export function kickFdProblem(fd: Fd): string | null {
  if (!/^eventfd-count:/m.test(readProcText(`/proc/self/fdinfo/${fd.fd}`))) return 'it is not an eventfd';
  if ((native.statusFlags(fd.fd) & O_NONBLOCK!) === 0) return 'it is a blocking eventfd (no O_NONBLOCK)';
  return null;
}

export class IoEventFds {
  readonly #client: VfioUserClient;
  /** Whether the owning lease has closed: an fd that arrives after that is closed, not kept. */
  readonly #closed: () => boolean;
  /** Per "region:offset". */
  readonly #byKey = new Map<string, Promise<Fd | null>>();

  constructor(client: VfioUserClient, closed: () => boolean) {
    this.#client = client;
    this.#closed = closed;
  }

  /** The fd for `offset` of `region`, or null when the device offers none there (see Lease.ioEventFd). */
  get(region: number, offset: number): Promise<Fd | null> {
    const key = `${region}:${offset}`;
    let p = this.#byKey.get(key);
    if (!p) {
      const fetched = this.#fetch(region, BigInt(offset));
      this.#byKey.set(key, fetched);
      // A failure is the caller's, not the lease's for good (a passing ENOMEM): the next ask tries again.
      fetched.catch(() => {
        if (this.#byKey.get(key) === fetched) this.#byKey.delete(key);
      });
      p = fetched;
    }
    return p;
  }

  async #fetch(region: number, offset: bigint): Promise<Fd | null> {
    let reply: Awaited<ReturnType<VfioUserClient['regionIoFds']>>;
    try {
      reply = await this.#client.regionIoFds(region);
    } catch (err) {
      // No kick fd offered (ENOTSUP: a device without them; ENOSPC: more than one message can carry, from a
      // device that does not share them): the device's idle poll serves the queue, as in datasheet rev 1.
      const code = (err as { code?: string }).code;
      if (code === 'ENOTSUP' || code === 'ENOSPC') return null;
      throw fromCallError(`region ${region} io fds`, err);
    }
    const hit = reply.subRegions.find((s) => s.offset <= offset && offset < s.offset + (s.size || 1n));
    const fd = hit ? (reply.fds[hit.fdIndex] ?? null) : null;
    for (const f of reply.fds) if (f !== fd) f.close();
    if (fd && this.#closed()) {
      fd.close();
      return null;
    }
    return fd;
  }

  /** Closes every fd asked for, now or when its reply comes. */
  closeAll(): void {
    for (const p of this.#byKey.values())
      void p.then(
        (fd) => fd?.close(),
        () => undefined,
      );
    this.#byKey.clear();
  }
}
