// The broker state an upgrade hands over: one versioned JSON document whose
// descriptors travel alongside (SCM_RIGHTS) and are named by their index in
// the transfer's fd list. The versioning rule is in docs/ARCHITECTURE.md
// ("Upgrading the broker"): `version` changes only when a reader of the
// previous version would misread the document; fields are only ever added
// (a reader ignores what it does not know); per-driver state is an opaque
// blob under `driver.state`, owned by the driver, with its own fds.

import type { KernelDeviceHandover } from '../../device/kernel/device-upgrade.js';
import type { VfioUserDeviceHandover } from '../../device/vfio-user-device.js';
import type { DeviceFault, LeaseRequest, LeaseResources } from '../../drivers/driver.js';
import type { AdoptedSession } from '../../vfio/user/connection.js';
import type { AuditRecord } from '../audit.js';
import type { DirectSlicesState } from '../audit-scan/direct-slices.js';
import type { LeaseMapping, LeaseState } from '../lease.js';
import type { CallerContext } from '../policy.js';
import type { SessionPciState } from '../session-state.js';

export const STATE_FORMAT = 'devlease-broker-state';
/**
 * This broker writes version 3 for a vfio-user device and version 4 (5 with audited slices handed out) for a
 * kernel one, 6 for either when a slice's release count was lost, 7 with relayed DMA maps, and reads 1 to 7.
 * - Version 2 added `device.transport: 'kernel'`: a version-1 reader would take its device for a vfio-user
 *   connection, so it must refuse such a document (at the hello, before anything is held).
 * - Versions 3 and 4 (3: vfio-user, 4: kernel) changed what a socket's `partial` holds: the stream socket reads
 *   ahead, so it may hold whole messages read and not yet delivered before the start of one, with the fds of
 *   the last message that starts in it (src/sys/stream-reader.ts). A reader of 1 or 2 takes it for the start of
 *   one message: it would refuse several and leave one undelivered. A 1 or 2 document (the start of one message
 *   at most) reads the same either way.
 */
export const STATE_VERSION = 3;
export const KERNEL_STATE_VERSION = 4;
/**
 * Version 5 (kernel): `leases.direct`, the audit of direct slices handed out. A reader of 4 would serve those
 * leases unaudited and finish a reclaim awaiting their release at once (scrubbing a page still mapped), so a
 * document with audited slices handed out is 5; without, it stays 4 (older brokers read it).
 */
export const KERNEL_AUDITED_STATE_VERSION = 5;
/**
 * Version 6 (either device): a slice unit's `countLost`, a release count that lost events to an inotify overflow.
 * A reader of 5 would trust the count again, and could hand a slice still mapped by its last holder to the next
 * client, so a document with such a unit is 6 (it may hold what 3, 4 or 5 hold); without one it stays as it was.
 */
export const SLICE_COUNT_LOST_STATE_VERSION = 6;
/**
 * Version 7 (vfio-user): a lease mapping `relayed` (no fd: the broker serves the device's accesses to it from
 * the lease's client), and the device connection's DMA map for it with fd -1. A reader of 6 would refuse the
 * fd it cannot find, naming an fd that never came, so a document with such a map is 7 (it may hold what 3 and 6
 * hold); without one it stays as it was.
 */
export const RELAYED_DMA_STATE_VERSION = 7;
export const READABLE_VERSIONS = [1, 2, 3, 4, 5, 6, 7];

/**
 * The version a document about this device is written in (`audited`: direct slices are handed out;
 * `countLost`: a slice unit handed over has lost its release count; `relayed`: a lease has memory without an fd).
 */
export function stateVersionFor(
  device: { transport: string },
  audited = false,
  countLost = false,
  relayed = false,
): number {
  if (relayed) return RELAYED_DMA_STATE_VERSION;
  if (countLost) return SLICE_COUNT_LOST_STATE_VERSION;
  if (!device.transport.startsWith('kernel')) return STATE_VERSION;
  return audited ? KERNEL_AUDITED_STATE_VERSION : KERNEL_STATE_VERSION;
}

export interface HandedLease {
  id: string;
  request: LeaseRequest;
  ctx: CallerContext;
  resources: LeaseResources;
  createdAt: number;
  state: LeaseState;
  endReason: string | null;
  quarantineReason: string | null;
  /** Revoke deadline, absolute (ms since the epoch): re-armed with what is left of it. */
  deadline: number | null;
  mappings: LeaseMapping[];
  /**
   * Per lease region: each unit's device fd (index) and how many descriptions are out; ownOpens (added in
   * version 1; absent: 0): how many of those the old broker re-opened with their IN_OPEN still queued;
   * countLost (version 6; absent: false): the count lost events, so `outstanding` is not to be trusted.
   */
  slices: [number, { fd: number; outstanding: number; ownOpens?: number; countLost?: boolean }[]][];
  errFd: number | null;
  reqFd: number | null;
  noticeFd: number | null;
  faults: DeviceFault[];
  /** Every fault the lease was sent, `faults` the last of them (absent from an older broker: faults.length). */
  faultsTotal?: number;
  /** A reclaim asked for while the old broker held the table: the new one runs it at once. */
  reclaim: string | null;
}

export interface HandedSession {
  kind: string;
  fd: number;
  pidfd: number | null;
  /**
   * Bytes already read and not yet served (base64): whole messages read ahead, then the start of the next
   * (versions 1 and 2: the start of the next request only), and the fds of the last message starting in them.
   */
  partial: string;
  partialFds: number[];
  /** The lease it serves (null: VERSION not yet received; the new broker serves it from the start). */
  lease: string | null;
  adopted: AdoptedSession | null;
  devlease: boolean;
  /**
   * The session's virtual config space and MSI-X table (added in version 1; absent from older documents:
   * the session then starts from the reset state).
   */
  pci?: SessionPciState | null;
}

export interface BrokerState {
  format: typeof STATE_FORMAT;
  version: number;
  broker: { pid: number; startedAt: string; upgrades: number };
  device:
    | { transport: 'vfio-user'; fd: number; state: VfioUserDeviceHandover }
    /** Version 2. */
    | { transport: 'kernel'; state: KernelDeviceHandover };
  driver: { name: string; state: unknown; fds: number[] };
  listening: { name: string; path: string; type: 'stream' | 'seqpacket'; fd: number }[];
  /**
   * The metrics endpoint's listening socket and the `[metrics] listen` it was bound for (absent from an older
   * broker, or with no endpoint: the new broker binds its own).
   */
  metrics?: { listen: string; fd: number } | null;
  /** upgradeAsker: which connection's `upgrade` request is unanswered (added in version 1; may be absent). */
  admin: { connections: number[]; upgradeAsker?: number | null };
  /**
   * sliceWatch (added in version 1; absent: a fresh instance, and a slice release between the two brokers
   * is missed): the fd of the slice watcher's inotify instance, its unread events queued for the new broker.
   * A lease 'awaiting-release' is reclaimed again by the new broker (the steps are idempotent) and waits there.
   */
  leases: {
    nextId: number;
    draining: boolean;
    list: HandedLease[];
    sliceWatch?: number | null;
    /** The audit of direct slices handed out (kernel; version 5, absent before). */
    direct?: DirectSlicesState;
  };
  sessions: HandedSession[];
  audit: { recent: AuditRecord[] };
}

/** Why a document cannot be read by this broker, or null. */
export function refusal(doc: unknown): string | null {
  const d = doc as Partial<BrokerState> | null;
  if (!d || d.format !== STATE_FORMAT) return `not a ${STATE_FORMAT} document`;
  if (!READABLE_VERSIONS.includes(d.version as number))
    return `state version ${String(d.version)} is not one this broker reads (${READABLE_VERSIONS.join(', ')})`;
  return null;
}
