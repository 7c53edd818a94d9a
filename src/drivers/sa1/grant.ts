// The resources of one SA-1 `queue` lease: its queue page slice (and
// device-memory granules, one lease region each), its IOVA window and the
// view the client sees of it, its vector, and the isolation each part has.
// Pure: Sa1Driver.acquire() has taken the queue, window and granules.

import { BAR2, BAR4 } from '../../hw/sa1/regs.js';
import type { DriverConfig, LeaseResources } from '../driver.js';
import { identityView } from '../driver.js';
import type { Sa1Geometry } from './driver.js';

/** Lease region index of the first device-memory granule (after the devlease info region, 9). */
export const DEVMEM_LEASE_REGION0 = 10;

export interface QueueGrant {
  geometry: Sa1Geometry;
  queue: number;
  window: { base: bigint; size: bigint };
  devmem: { offset: bigint; size: bigint } | null;
  granules: number;
  /** The layout puts more than one lease in a page (layout.allow_cooperative). */
  cooperative: boolean;
  /** The device can revoke slice fds. */
  revocable: boolean;
  iovaView: DriverConfig['sa1']['iovaView'];
}

export function queueLeaseResources(a: QueueGrant): LeaseResources {
  const sliceIsolation = a.cooperative
    ? {
        level: 'cooperative' as const,
        reason: 'the layout puts more than one lease in a page (layout.allow_cooperative)',
      }
    : a.revocable
      ? { level: 'enforced' as const, reason: 'own slice fd from the device, revocable' }
      : {
          level: 'enforced' as const,
          reason: 'own slice fd from the device; not revocable: reuse waits for observed release',
        };
  const { geometry: g, queue: q, window, devmem, granules } = a;
  const stride = BigInt(g.queueStride);
  const slices: LeaseResources['slices'] = [
    {
      region: BAR2,
      offset: BigInt(q) * stride,
      size: stride,
      leaseRegion: BAR2,
      leaseOffset: 0n,
      unit: stride,
      isolation: sliceIsolation,
    },
  ];
  // Each device-memory granule is its own lease region (one slice fd each), after the info region (9).
  for (let i = 0; devmem && i < granules; i++) {
    const unit = BigInt(g.granule);
    slices.push({
      region: BAR4,
      offset: devmem.offset + BigInt(i) * unit,
      size: unit,
      leaseRegion: DEVMEM_LEASE_REGION0 + i,
      leaseOffset: 0n,
      unit,
      isolation: sliceIsolation,
    });
  }
  return {
    kind: 'queue',
    queue: q,
    slices,
    window,
    view:
      a.iovaView === 'translated'
        ? {
            mode: 'translated',
            base: 0n,
            size: window.size,
            reason: 'sa1.iova_view: the queue translates by Q_XLAT (datasheet rev 2 §2.2)',
          }
        : identityView(window, 'sa1.iova_view = "identity": the client uses the device IOVAs')!,
    vectors: [q],
    devmem,
    isolation: {
      queuePage: sliceIsolation,
      ...(devmem ? { devmem: sliceIsolation } : {}),
      iovaWindow: {
        level: 'enforced',
        reason: 'the broker maps all DMA after a window check; the device checks Q_WIN too',
      },
      interrupts: { level: 'enforced', reason: 'the client eventfd is wired to its own vector only' },
    },
  };
}

/**
 * Why the device's layout cannot give each lease pages of its own (empty: it can): a queue page or a
 * device-memory granule smaller than, or not a multiple of, the host page. Such a layout leases only with
 * layout.allow_cooperative, and its slices are then `cooperative` (queueLeaseResources).
 */
export function layoutProblems(g: Sa1Geometry, page: number): string[] {
  const problems: string[] = [];
  if (g.queueStride < page || g.queueStride % page !== 0) {
    problems.push(
      `region 2 (BAR2): offset 0, stride ${g.queueStride} is below or not a multiple of the ${page}-byte page`,
    );
  }
  if (g.granule < page || g.granule % page !== 0) {
    problems.push(
      `region 4 (BAR4): offset 0, stride ${g.granule} is below or not a multiple of the ${page}-byte page`,
    );
  }
  return problems;
}
