// How many DMA maps the simulator advertises (VERSION's max_dma_maps) and
// then holds. Every map is a guarded mmap (dma-mmap.ts), and so is every
// queue page and device-memory granule (model/memfd-backing.ts); the native
// SIGBUS guard table holds a fixed number of guarded mappings per process
// (native.guardSlots().capacity: 4096). Advertising the spec's default
// 65535 let a client that stayed well within it be refused at its 3,969th
// map with EINVAL ("too many guarded mappings in this process"). So the
// simulator advertises what its table has left once its slices are in, less
// a reserve, and refuses the map past it itself: ENOSPC, naming the limit,
// as VFIO's type1 IOMMU refuses a map past its dma_entry_limit (vfio-user
// is modelled on it and names no errno of its own). docs/SA-1.md, "IOMMU".

import { VfioError } from '../../errors.js';
import { native } from '../../sys/native.js';
import { SPEC_DEFAULT_MAX_DMA_MAPS } from '../../vfio/user/protocol.js';
import { OptionError, type Sa1Options } from '../model/options.js';

/**
 * Guard slots kept out of the DMA maps' share: a slice renewed (a revoke) takes its new mapping's slot before
 * it lets go of the old one, and a program embedding the simulator may hold guarded mappings of its own (a
 * lease client maps its BARs guarded). The table is per process: an embedder holding more than this should
 * lower maxDmaMaps by as much.
 */
export const SIM_GUARD_RESERVE = 64;

/** Guard slots the device's slices take for its whole life: one per queue page, one per device-memory granule. */
export function sliceGuardSlots(o: Sa1Options): number {
  return o.numQueues + o.devmemSize / o.devmemGranule;
}

/** The most DMA maps a simulator with these options can hold: its default max_dma_maps. */
export function dmaMapRoom(o: Sa1Options): number {
  return Math.min(
    SPEC_DEFAULT_MAX_DMA_MAPS,
    native.guardSlots().capacity - sliceGuardSlots(o) - SIM_GUARD_RESERVE,
  );
}

/**
 * max_dma_maps for a simulator with options `o`: `given` if it fits (an integer from 1 to dmaMapRoom(o)), the
 * room if not given. Throws OptionError naming `name` otherwise, or when the slices leave no room at all.
 */
export function resolveMaxDmaMaps(o: Sa1Options, given: number | undefined, name = 'maxDmaMaps'): number {
  const room = dmaMapRoom(o);
  if (room < 1) {
    const { capacity } = native.guardSlots();
    throw new OptionError(
      name,
      `no room for DMA maps: the ${o.numQueues} queue pages and ${o.devmemSize / o.devmemGranule} device-memory ` +
        `granules take ${sliceGuardSlots(o)} of the ${capacity} guarded mappings a process holds ` +
        `(${SIM_GUARD_RESERVE} kept spare); use fewer queues or a larger granule`,
    );
  }
  if (given === undefined) return room;
  if (!Number.isSafeInteger(given) || given < 1 || given > room) {
    throw new OptionError(
      name,
      `${name} must be an integer from 1 to ${room} (the guard table's ${native.guardSlots().capacity} ` +
        `mappings less ${sliceGuardSlots(o)} for queue pages and granules and ${SIM_GUARD_RESERVE} spare), got ${given}`,
    );
  }
  return given;
}

/** The refusal of a DMA_MAP when `limit` maps are held already. */
export function tooManyMaps(limit: number): VfioError {
  return new VfioError(
    'ENOSPC',
    `DMA map limit reached: the simulator holds at most ${limit} maps (the max_dma_maps it advertised); unmap one first`,
  );
}
