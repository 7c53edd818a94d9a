// The lease's info region, as the broker writes it (JSON; see docs/PROTOCOL.md).

import type { VfioUserClient } from '../vfio/user/client.js';
import { leaseError } from './errors.js';

export interface Isolation {
  level: 'enforced' | 'audited' | 'cooperative';
  reason: string;
}

export interface LeaseInfo {
  kind: string;
  lease: string;
  state: 'active' | 'revoking' | 'reclaiming' | 'awaiting-release' | 'released';
  /** Revocation deadline, ms since the epoch, while `revoking`. */
  deadline: number | null;
  queue: number | null;
  /**
   * The IOVA range this client maps its memory into and hands the device (DmaPool allocates from it). With a
   * translated view (iovaView.mode) it is the lease's own address space, e.g. [0, 4 GiB), not the device's.
   */
  iovaWindow: { base: bigint; size: bigint } | null;
  /** 'translated': a private IOVA space; 'identity': the device's own addresses (a driver that cannot translate). */
  iovaView: { mode: 'translated' | 'identity'; reason: string } | null;
  devmem: { offset: bigint; size: bigint } | null;
  vectors: number;
  regions: { index: number; size: bigint; unit: bigint }[];
  isolation: Record<string, Isolation>;
  /** The last fault records the broker keeps for this lease (16), oldest first. */
  faults: { queue: number | null; code: number; name: string; address: bigint }[];
  /**
   * How many faults this lease was sent in all. A broker that does not count them (one from before the count,
   * e.g. after a downgrade) is taken to have sent the faults it lists: faults.length, which grows with the list.
   */
  faultsTotal: number;
}

const big = (v: unknown, what: string): bigint => {
  if (typeof v !== 'string' && typeof v !== 'number')
    throw leaseError('EPROTO', `info region: ${what} is not a number`);
  return BigInt(v);
};

/** The info region's JSON as the broker writes it (bigints as hex strings). */
interface RawInfo {
  kind: string;
  lease: string;
  state: LeaseInfo['state'];
  deadline?: number | null;
  queue?: number | null;
  iovaWindow?: { base: string; size: string } | null;
  iovaView?: { mode: 'translated' | 'identity'; reason: string } | null;
  devmem?: { offset: string; size: string } | null;
  vectors?: number;
  regions?: { index: number; size: string; unit: string }[];
  isolation?: Record<string, Isolation>;
  faults?: { queue: number | null; code: number; name: string; address: string }[];
  faultsTotal?: number;
}

/** Most MSI-X vectors a lease may have: a PCI function has at most 2048 (as the C client). */
export const MAX_LEASE_VECTORS = 2048;
/**
 * Most regions a lease lists (as the C client): device-memory granules are regions 10, 11, … (the broker's
 * sa1.max_devmem_granules allows 65,536; the 16 KiB info region holds a few hundred); no index past them.
 */
const MAX_LEASE_REGIONS = 1024;
const MAX_REGION_INDEX = 10 + 65_536;

const refuse = (what: string): never => {
  throw leaseError('EPROTO', `info region: ${what}`);
};
const isIndex = (v: unknown, max: number): v is number =>
  typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= max;

/**
 * The broker's info, checked before the client acts on it (it maps each region, makes an eventfd per vector):
 * a region listed twice was mapped twice and its first mapping outlived close(); a vector count was taken
 * as sent. Each refusal is EPROTO naming the field.
 */
export function parseLeaseInfo(raw: unknown): LeaseInfo {
  const j = raw as RawInfo;
  if (typeof j !== 'object' || j === null || typeof j.lease !== 'string') {
    throw leaseError('EPROTO', 'info region does not hold a devlease lease description');
  }
  if (typeof j.kind !== 'string' || typeof j.state !== 'string') refuse('kind or state is not a string');
  const vectors = j.vectors ?? 0;
  if (!isIndex(vectors, MAX_LEASE_VECTORS))
    refuse(`vectors ${JSON.stringify(vectors)} is not a vector count (0..${MAX_LEASE_VECTORS})`);
  const rawRegions = j.regions ?? [];
  if (!Array.isArray(rawRegions) || rawRegions.length > MAX_LEASE_REGIONS)
    refuse(`regions is not an array of at most ${MAX_LEASE_REGIONS}`);
  const seen = new Set<number>();
  const regions = rawRegions.map((r, i) => {
    if (typeof r !== 'object' || r === null || !isIndex(r.index, MAX_REGION_INDEX))
      refuse(`regions[${i}].index is not a region index (0..${MAX_REGION_INDEX})`);
    if (seen.has(r.index)) refuse(`region ${r.index} is listed twice (regions[${i}])`);
    seen.add(r.index);
    return { index: r.index, size: big(r.size, 'region size'), unit: big(r.unit, 'region unit') };
  });
  const rawFaults = j.faults ?? [];
  if (!Array.isArray(rawFaults)) refuse('faults is not an array');
  const faults = rawFaults.map((f) => ({
    queue: f.queue,
    code: f.code,
    name: f.name,
    address: big(f.address, 'fault address'),
  }));
  const faultsTotal = j.faultsTotal ?? faults.length;
  if (!Number.isSafeInteger(faultsTotal) || faultsTotal < faults.length)
    refuse(
      `faultsTotal ${JSON.stringify(faultsTotal)} is not a count of at least the ${faults.length} faults listed`,
    );
  return {
    kind: j.kind,
    lease: j.lease,
    state: j.state,
    deadline: j.deadline ?? null,
    queue: j.queue ?? null,
    iovaWindow: j.iovaWindow
      ? { base: big(j.iovaWindow.base, 'iovaWindow.base'), size: big(j.iovaWindow.size, 'iovaWindow.size') }
      : null,
    iovaView: j.iovaView ?? null,
    devmem: j.devmem
      ? { offset: big(j.devmem.offset, 'devmem.offset'), size: big(j.devmem.size, 'devmem.size') }
      : null,
    vectors,
    regions,
    isolation: j.isolation ?? {},
    faults,
    faultsTotal,
  };
}

/**
 * devlease's notice irq from the VERSION reply (docs/PROTOCOL.md), or null when the broker offers none. It must
 * be past the five standard indexes (VFIO_PCI_NUM_IRQS): one of them (3, ERR) had its eventfd replaced.
 */
export function noticeIrqOf(devlease: { noticeIrq?: unknown } | undefined): number | null {
  const v = devlease?.noticeIrq;
  if (v === undefined || v === null) return null;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 5 || v > MAX_REGION_INDEX) {
    throw leaseError(
      'EPROTO',
      `VERSION reply: devlease.noticeIrq ${JSON.stringify(v)} is not an irq index above the standard five (5..${MAX_REGION_INDEX})`,
    );
  }
  return v;
}

/**
 * The largest info region read: the broker's is 16 KiB (docs/PROTOCOL.md, "Device-specific info region"). The size
 * comes from the server, and a read of it is held whole in memory: unbounded, a REGION_INFO saying 2^36 made the
 * client try to read 64 GiB. The C library has the same cap (clients/c/src/info.c).
 */
export const MAX_INFO_REGION_BYTES = 1 << 20;

/** The info region's JSON, read through the connection (a broker that sends no info with VERSION). */
export async function readInfoRegion(client: VfioUserClient, index: number): Promise<unknown> {
  const info = await client.regionInfo(index);
  info.fd?.close();
  if (info.size === 0n || info.size > BigInt(MAX_INFO_REGION_BYTES)) {
    throw leaseError(
      'EPROTO',
      `info region ${index}: size ${info.size} is not an info region's (1..${MAX_INFO_REGION_BYTES} bytes)`,
    );
  }
  const bytes = await client.regionRead(index, 0, Number(info.size));
  const end = bytes.indexOf(0);
  const text = new TextDecoder().decode(end < 0 ? bytes : bytes.subarray(0, end));
  return JSON.parse(text);
}
