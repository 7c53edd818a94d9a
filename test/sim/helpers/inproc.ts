// The device model in-process: heap-backed slices and DMA memory, a manual
// clock, and a Bus whose `until` runs device rounds (deterministic: no
// worker, no timers).

import { Sa1Device } from '../../../src/sim/model/device.js';
import { resolveOptions, type Sa1Options } from '../../../src/sim/model/options.js';
import { HeapBacking } from '../../../src/sim/model/slices.js';
import type { Bus, HostMem } from './driver.js';

export interface InProc {
  dev: Sa1Device;
  bus: Bus;
  backing: HeapBacking;
  /** Interrupts delivered, in order: [irq index, vector]. */
  irqs: [number, number][];
  clock: { now: number };
  /** Map fresh heap memory at iova (4 KiB multiples) with the given permissions. */
  map(iova: bigint, size: number, perms?: { read?: boolean; write?: boolean }): HostMem;
  /** How many times vector v of irq index i fired. */
  fired(index: number, vector: number): number;
}

export function inProcess(partial: Partial<Sa1Options> = {}): InProc {
  const options = resolveOptions({ numQueues: 4, devmemSize: 1 << 20, devmemGranule: 1 << 16, ...partial });
  const backing = new HeapBacking(options);
  const irqs: [number, number][] = [];
  const clock = { now: 0 };
  const dev = new Sa1Device(options, backing, {
    interrupt: (index, vector) => irqs.push([index, vector]),
    now: () => clock.now,
  });
  const bus: Bus = {
    read: async (region, offset, count) => dev.regionRead(region, offset, count),
    write: async (region, offset, data) => dev.regionWrite(region, offset, data),
    until: async (pred, what) => {
      for (let i = 0; i < 100_000; i++) {
        if (await pred()) return;
        if (!dev.step()) {
          if (await pred()) return;
          const due = dev.nextDueInMs();
          if (due === null) throw new Error(`device went idle before: ${what}`);
          clock.now += due;
        }
      }
      throw new Error(`device still busy, never saw: ${what}`);
    },
  };
  return {
    dev,
    bus,
    backing,
    irqs,
    clock,
    map(iova, size, perms = {}) {
      const view = new Uint8Array(new SharedArrayBuffer(size));
      dev.dmaMap({
        iova: Number(iova),
        size,
        readable: perms.read ?? true,
        writable: perms.write ?? true,
        view,
        release: () => {},
      });
      return { iova, view };
    },
    fired: (index, vector) => irqs.filter(([i, v]) => i === index && v === vector).length,
  };
}
