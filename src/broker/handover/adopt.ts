// The new broker's half of an upgrade: rebuild from the state document and
// its fds (format.ts) — the driver adopts the device and checks it agrees,
// the listening sockets, every session, lease and admin connection are
// rebuilt — all held still until the old broker commits (takeOver()).
// Every fd the document does not use is closed: nothing received is leaked.

import type { Device } from '../../device/device.js';
import { adoptKernelDevice } from '../../device/kernel/handover.js';
import { VfioUserDevice } from '../../device/vfio-user-device.js';
import type { LeaseResources } from '../../drivers/driver.js';
import type { Fd } from '../../sys/fd.js';
import type { ListenSocket } from '../../sys/listen-fds.js';
import { PidFd } from '../../sys/pidfd.js';
import { StreamSocket } from '../../sys/stream-socket.js';
import { LongTimer } from '../../util/long-timer.js';
import type { ConnectionInfo } from '../../vfio/user/device-model.js';
import type { MessageSocket } from '../../vfio/user/transport.js';
import type { Broker } from '../broker.js';
import { Lease } from '../lease.js';
import type { PendingSession } from '../pending-session.js';
import { LeaseSession } from '../session.js';
import { SliceUnit } from '../slices.js';
import type { BrokerParts } from './collect.js';
import type { BrokerState, HandedLease } from './format.js';

/** The device connection of the state (the daemon opens the device from it instead of --device). */
export async function adoptDevice(state: BrokerState, fds: Fd[]): Promise<Device> {
  const d = state.device;
  if (d.transport === 'kernel') return adoptKernelDevice(d.state, (i) => take(fds, i));
  return VfioUserDevice.adopt(take(fds, d.fd), d.state, {}, (i) => take(fds, i));
}

/** The driver takes the device as the old broker left it (no boot), and checks it still agrees. */
export async function adoptDriver(b: Broker, state: BrokerState, fds: Fd[]): Promise<void> {
  if (state.driver.name !== b.driver.name)
    throw new Error(`the state is of driver ${state.driver.name}, this device gets ${b.driver.name}`);
  if (!b.driver.adopt) throw new Error(`driver ${b.driver.name} cannot take a handed-over device`);
  const running = (s: string) => s === 'active' || s === 'revoking';
  const of = (want: (l: HandedLease) => boolean): LeaseResources[] =>
    state.leases.list.filter(want).map((l) => l.resources);
  await b.driver.adopt(
    state.driver.state,
    state.driver.fds.map((i) => take(fds, i)),
    of((l) => running(l.state)),
    // Awaiting the release of their slices, or quarantined: out of the pool until their reclaim ends.
    of((l) => !running(l.state) && l.state !== 'released'),
  );
  await b.driver.hold?.();
}

/**
 * The metrics endpoint's listening socket, if the old broker had one for the same `listen`; one bound for
 * another address is closed (a dup: the old broker's stays) and the new broker binds its own.
 */
export function inheritedMetrics(state: BrokerState, fds: Fd[], listen: string | null): Fd | null {
  if (!state.metrics) return null;
  const fd = take(fds, state.metrics.fd);
  if (state.metrics.listen === listen) return fd;
  fd.close();
  return null;
}

export function inheritedListening(state: BrokerState, fds: Fd[]): ListenSocket[] {
  return state.listening.map((l) => ({ name: l.name, path: l.path, type: l.type, fd: take(fds, l.fd) }));
}

type SessionMaker = (
  kind: string,
  conn: ConnectionInfo,
  socket: MessageSocket,
  adopted: { session: LeaseSession; pidfd: PidFd | null },
) => PendingSession;

/** Leases, sessions and admin connections, then everything held until takeOver(). */
export function rebuild(
  b: Broker,
  p: BrokerParts,
  state: BrokerState,
  fds: Fd[],
  makeSession: SessionMaker,
): void {
  b.leases.idSequence = state.leases.nextId;
  // The old broker's slice events not yet read are in this queue (paused until takeOver()): read here, a
  // release between the old broker's count and now is seen.
  if (typeof state.leases.sliceWatch === 'number') b.leases.watcher.adopt(take(fds, state.leases.sliceWatch));
  if (state.leases.draining) b.leases.draining = true;
  if (state.leases.direct) {
    if (!b.leases.direct)
      throw new Error('the state carries an audit of direct slices: this device hands none out');
    b.leases.direct.adopt(state.leases.direct);
  }
  // The old broker holds the device fd until it exits: not a violation of the slice audit.
  b.leases.direct?.auditor.allowBroker(state.broker.pid);
  for (const h of state.leases.list) {
    const lease = new Lease(h.id, h.request, h.ctx, h.resources);
    Object.assign(lease, { createdAt: h.createdAt });
    lease.generation = b.leases.generation;
    lease.state = h.state;
    lease.endReason = h.endReason;
    lease.quarantineReason = h.quarantineReason;
    lease.deadline = h.deadline;
    for (const m of h.mappings) {
      lease.mappings.set(m.iova, m);
      // The device connection's map at m.deviceIova (handed over without memory) is served from here again.
      if (m.relayed) b.leases.relay.add(lease, m);
    }
    for (const [region, units] of h.slices)
      lease.slices.set(
        region,
        units.map((u) =>
          SliceUnit.adopt(
            take(fds, u.fd),
            u.outstanding,
            b.leases.watcher,
            u.ownOpens ?? 0,
            u.countLost === true,
          ),
        ),
      );
    lease.errFd = h.errFd === null ? null : take(fds, h.errFd);
    lease.reqFd = h.reqFd === null ? null : take(fds, h.reqFd);
    lease.noticeFd = h.noticeFd === null ? null : take(fds, h.noticeFd);
    lease.faults.push(...h.faults);
    lease.faultsTotal = h.faultsTotal ?? h.faults.length;
    if (h.state === 'quarantined') {
      lease.parked();
      lease.reclaimed = Promise.resolve(); // its reclaim ended (in the old broker) with the quarantine
    }
    b.leases.add(lease);
  }
  const kinds = b.driver.kinds();
  for (const s of state.sessions) {
    const server = p.servers[kinds.indexOf(s.kind)];
    const fd = take(fds, s.fd);
    const pidfd = s.pidfd === null ? null : PidFd.adopt(take(fds, s.pidfd));
    if (!server) {
      fd.close();
      pidfd?.close();
      continue;
    }
    const socket = new StreamSocket(fd, {
      ...server.socketOptions,
      partial: { data: Buffer.from(s.partial, 'base64'), fds: s.partialFds.map((i) => take(fds, i)) },
    });
    const lease = s.lease ? b.leases.get(s.lease) : undefined;
    if (!lease || !s.adopted) {
      // Not past VERSION: served from the start, as a new connection (its pidfd is taken again).
      pidfd?.close();
      server.serveSocket(socket);
      continue;
    }
    const session = new LeaseSession(lease, b.leases, {
      devlease: s.devlease,
      ...(s.pci ? { pci: s.pci } : {}),
    });
    const model = makeSession(s.kind, { id: 0, cred: socket.peerCred() }, socket, { session, pidfd });
    server.adoptSocket(socket, model, s.adopted);
  }
  for (const [n, i] of state.admin.connections.entries())
    p.admin?.adoptConnection(take(fds, i), n === state.admin.upgradeAsker);
  b.audit.recent.push(...state.audit.recent);
  b.startedAt = new Date();
  b.upgrades = state.broker.upgrades + 1;
  // Held as the old broker was, until the commit: nothing is read or reclaimed before it.
  for (const s of p.servers) s.pauseAccepting();
  p.admin?.hold();
  for (const s of p.servers) for (const c of s.connections) c.hold();
  void b.leases.hold().catch(() => {});
  pendingReclaims.set(
    b,
    state.leases.list.filter((h) => h.reclaim).map((h) => [h.id, h.reclaim!]),
  );
  // Unused fds (a document that names fewer than were sent) are closed here.
  for (const f of fds) if (f && !used.has(f)) f.close();
}

const used = new WeakSet<Fd>();
const pendingReclaims = new WeakMap<Broker, [string, string][]>();

function take(fds: Fd[], i: number): Fd {
  const fd = fds[i];
  if (!fd || used.has(fd)) throw new Error(`the state names fd ${i}, which did not come or is named twice`);
  used.add(fd);
  return fd;
}

/** After the commit: re-arm revoke deadlines (what is left of them), run the reclaims the old broker held. */
export function finishTakeOver(b: Broker): void {
  for (const l of b.leases.all()) {
    if (l.state !== 'revoking' || l.deadline === null) continue;
    const left = Math.max(0, l.deadline - Date.now());
    const why = l.endReason ?? 'revoked by the owner';
    l.revokeTimer = new LongTimer(left, () => void b.leases.reclaim(l, `deadline passed: ${why}`));
  }
  for (const [id, reason] of pendingReclaims.get(b) ?? []) {
    const l = b.leases.get(id);
    if (l) void b.leases.reclaim(l, reason);
  }
  // Awaiting the release of their slices: the reclaim runs again from the start (quiesce, unwire, unmap are
  // idempotent; the audit shows it) and waits for the release here, or goes on if it already came.
  for (const l of b.leases.all())
    if (l.state === 'awaiting-release' && !l.reclaimed)
      void b.leases.reclaim(l, l.endReason ?? 'awaiting the release of its slices (carried over)');
  pendingReclaims.delete(b);
}
