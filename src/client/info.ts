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
  /** How many faults this lease was sent in all (a broker that does not say: faults.length). */
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

export function parseLeaseInfo(raw: unknown): LeaseInfo {
  const j = raw as RawInfo;
  if (typeof j !== 'object' || j === null || typeof j.lease !== 'string') {
    throw leaseError('EPROTO', 'info region does not hold a devlease lease description');
  }
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
    vectors: j.vectors ?? 0,
    regions: (j.regions ?? []).map((r) => ({
      index: r.index,
      size: big(r.size, 'region size'),
      unit: big(r.unit, 'region unit'),
    })),
    isolation: j.isolation ?? {},
    faults: (j.faults ?? []).map((f) => ({
      queue: f.queue,
      code: f.code,
      name: f.name,
      address: big(f.address, 'fault address'),
    })),
    faultsTotal: j.faultsTotal ?? j.faults?.length ?? 0,
  };
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
