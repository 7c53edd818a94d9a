// A vfio-user device connection's region io fds (VFIO_USER_DEVICE_GET_REGION_IO_FDS; SA-1 rev 2: one
// ioeventfd per queue page), asked of the device once per region and kept: they are the device's for the
// connection's lifetime, and a lease grant should not cost a device round trip. Split from
// vfio-user-device.ts, which drops them with their connection and asks a new one at once.

import type { Fd } from '../sys/fd.js';
import type { RegionIoFds } from '../vfio/user/region-io-fds.js';

export class IoFdCache {
  /** Ask the current connection (VfioUserClient.regionIoFds). */
  readonly #ask: (index: number) => Promise<RegionIoFds>;
  /** Per region index, the current connection's answer (or the request on its way). */
  readonly #asked = new Map<number, Promise<RegionIoFds>>();
  /** The entries of #asked that were answered (an upgrade hands those over). */
  readonly #known = new Map<number, RegionIoFds>();
  /** Regions whose io fds were ever asked for: a reconnect asks the new connection for them at once. */
  readonly #regions = new Set<number>();

  constructor(ask: (index: number) => Promise<RegionIoFds>) {
    this.#ask = ask;
  }

  /** Answered entries, for a handover. */
  known(): [number, RegionIoFds][] {
    return [...this.#known];
  }

  /** What another broker process had asked (an upgrade's handover). */
  adopt(index: number, io: RegionIoFds): void {
    this.#regions.add(index);
    this.#asked.set(index, Promise.resolve(io));
    this.#known.set(index, io);
  }

  /**
   * The io fds of region `index` (with `within`, only the sub-regions inside that range, with their fds alone,
   * renumbered in order of first use): dups the caller owns.
   */
  async get(index: number, within?: { offset: bigint; size: bigint }): Promise<RegionIoFds> {
    const all = await this.#cached(index);
    const inside = within
      ? all.subRegions.filter(
          (s) => s.offset >= within.offset && s.offset + s.size <= within.offset + within.size,
        )
      : all.subRegions;
    const at = new Map<number, number>();
    const subRegions = inside.map((s) => {
      let i = at.get(s.fdIndex);
      if (i === undefined) {
        i = at.size;
        at.set(s.fdIndex, i);
      }
      return { ...s, fdIndex: i };
    });
    const dups: Fd[] = [];
    try {
      for (const from of at.keys()) {
        const fd = all.fds[from];
        if (!fd) throw new Error(`region ${index}: sub-region names fd ${from} of ${all.fds.length}`);
        dups.push(fd.dup());
      }
    } catch (err) {
      for (const fd of dups) fd.close();
      throw err;
    }
    return { subRegions, fds: dups };
  }

  /**
   * A new connection: ask it now for every region asked before, so it holds what the old one held and the
   * first grant after it costs no device round trip. Best effort: a failure leaves the region to the next grant.
   */
  async refetch(): Promise<void> {
    await Promise.all([...this.#regions].map((index) => this.#cached(index).catch(() => undefined)));
  }

  /** The connection changes or goes: close its io fds (once answered). */
  drop(): void {
    for (const p of this.#asked.values()) {
      p.then(
        (r) => {
          for (const fd of r.fds) fd.close();
        },
        () => {},
      );
    }
    this.#asked.clear();
    this.#known.clear();
  }

  /**
   * Region `index`'s io fds, asked once. A refusal that is the device's answer for this connection's lifetime
   * (ENOTSUP: it offers none; ENOSPC: more than one message can carry, from a device that does not share them
   * as the simulator does) is kept too, so each lease does not ask again (the simulator's refusal, before it
   * shared, cost it ~10 ms per lease with 1,024 queues); any other failure is not kept.
   */
  #cached(index: number): Promise<RegionIoFds> {
    let cached = this.#asked.get(index);
    if (!cached) {
      this.#regions.add(index);
      const p = this.#ask(index);
      cached = p;
      this.#asked.set(index, p);
      p.then(
        (io) => {
          if (this.#asked.get(index) === p) this.#known.set(index, io);
        },
        (err: { code?: string }) => {
          if (err.code === 'ENOTSUP' || err.code === 'ENOSPC') return;
          if (this.#asked.get(index) === p) this.#asked.delete(index);
        },
      );
    }
    return cached;
  }
}
