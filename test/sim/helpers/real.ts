// The real simulator (device worker, memfd slices) driven through
// VfioUserClient the way the broker drives it: host memory is a memfd the
// test maps and passes with DMA_MAP; interrupts are eventfds.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type SimulatorHandle, type SimulatorOptions, startSimulator } from '../../../src/sim/index.js';
import { EventFd, type Mapping, MemFd } from '../../../src/sys/index.js';
import { VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD } from '../../../src/vfio/uapi/vfio.js';
import { VfioUserClient, type VfioUserClientOptions } from '../../../src/vfio/user/client.js';
import {
  VFIO_USER_F_DMA_REGION_READ,
  VFIO_USER_F_DMA_REGION_WRITE,
} from '../../../src/vfio/user/protocol.js';
import { openFdCount } from '../../helpers/fds.js';
import { type Bus, boot, type HostMem } from './driver.js';

/** Open descriptors of this process (the runtime's own transient reads left out: test/helpers/fds.ts). */
export function openFds(): number {
  return openFdCount();
}

/** Lines of /proc/self/maps naming a memfd (mappings held by this process, device worker included). */
export function mappingsOf(memfdName: string): number {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes(`/memfd:${memfdName} `)).length;
}

/** Poll `pred` (every ms, bounded) while the device runs on its own. */
export async function until(
  pred: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 10_000,
): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!(await pred())) {
    if (performance.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await sleep(1);
  }
}

/** Wait (bounded) until the device worker answers commands again, after an injected stall. */
export async function untilWorkerAnswers(
  r: { sim: { stats(): Promise<unknown> } },
  timeoutMs = 30_000,
): Promise<void> {
  await until(
    async () => {
      try {
        await r.sim.stats();
        return true;
      } catch {
        return false;
      }
    },
    'the worker to run again after its stall',
    timeoutMs,
  );
}

export function clientBus(client: VfioUserClient): Bus {
  return {
    read: async (region, offset, count) => new Uint8Array(await client.regionRead(region, offset, count)),
    write: (region, offset, data) => client.regionWrite(region, offset, data),
    until: (pred, what) => until(pred, what),
  };
}

export interface HostRegion extends HostMem {
  memfd: MemFd;
  mapping: Mapping;
  name: string;
}

export interface Rig {
  dir: string;
  sim: SimulatorHandle;
  client: VfioUserClient;
  bus: Bus;
  /** Create a memfd, map it here and DMA_MAP it at iova. */
  map(
    iova: bigint,
    size: number,
    opts?: { read?: boolean; write?: boolean; name?: string },
  ): Promise<HostRegion>;
  /** An eventfd set as MSI-X vector v (or irq index/vector). */
  eventfd(vector: number, index?: number): Promise<EventFd>;
  close(): Promise<void>;
}

let seq = 0;

export async function rig(
  opts: Partial<SimulatorOptions> = {},
  clientOpts: VfioUserClientOptions = {},
): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'sa1-test-'));
  const socketPath = join(dir, 'sa1.sock');
  const sim = await startSimulator({
    numQueues: 4,
    devmemSize: 1 << 20,
    devmemGranule: 1 << 16,
    ...opts,
    socketPath,
  });
  let client: VfioUserClient;
  try {
    client = await VfioUserClient.connect(socketPath, clientOpts);
  } catch (err) {
    await sim.close();
    throw err;
  }
  const regions: HostRegion[] = [];
  const efds: EventFd[] = [];
  return {
    dir,
    sim,
    client,
    bus: clientBus(client),
    async map(iova, size, o = {}) {
      const name = o.name ?? `sa1-test-host-${process.pid}-${seq++}`;
      const memfd = MemFd.create(name, { size });
      const mapping = memfd.map();
      const region = { iova, view: mapping.u8, memfd, mapping, name };
      regions.push(region);
      const flags =
        ((o.read ?? true) ? VFIO_USER_F_DMA_REGION_READ : 0) |
        ((o.write ?? true) ? VFIO_USER_F_DMA_REGION_WRITE : 0);
      await client.dmaMap({ fd: memfd.fd, iova, size, flags });
      return region;
    },
    async eventfd(vector, index = 2) {
      const efd = new EventFd();
      efds.push(efd);
      await client.setIrqs({
        flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        index,
        start: vector,
        count: 1,
        fds: [efd.fd],
      });
      return efd;
    },
    async close() {
      client.close();
      await sim.close();
      for (const r of regions) {
        r.mapping.unmap();
        r.memfd.close();
      }
      for (const e of efds) e.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Where bootedRig() loads the firmware image (64 KiB). */
export const RIG_FW_IOVA = 0x10_0000n;

/** A rig whose device is booted (firmware at RIG_FW_IOVA); closed again if the boot fails. */
export async function bootedRig(opts: Partial<SimulatorOptions> = {}): Promise<Rig> {
  const r = await rig(opts);
  try {
    await boot(r.bus, await r.map(RIG_FW_IOVA, 64 * 1024));
  } catch (err) {
    await r.close();
    throw err;
  }
  return r;
}

/** Requests the device worker served while `fn` ran (the stats request that ends the count excluded). */
export async function workerCommands(r: Rig, fn: () => Promise<void>): Promise<number> {
  const before = (await r.sim.stats()).commands;
  await fn();
  return (await r.sim.stats()).commands - before - 1;
}
