// The old broker's half of an upgrade, before the transfer: hold the control
// plane still (no accept, no request read, nothing in flight, no reclaim, no
// driver timer), then describe everything a lease lives on (format.ts).
// Holding changes nothing but what is read: resume() puts it all back.

import { KernelDevice } from '../../device/kernel/device.js';
import { VfioUserDevice } from '../../device/vfio-user-device.js';
import { DevleaseError } from '../../errors.js';
import type { Fd } from '../../sys/fd.js';
import type { PidFd } from '../../sys/pidfd.js';
import type { StreamSocket } from '../../sys/stream-socket.js';
import type { VfioUserServer } from '../../vfio/user/server.js';
import type { AdminServer } from '../admin.js';
import type { Broker } from '../broker.js';
import type { MetricsServer } from '../observe/metrics-server.js';
import type { PendingSession } from '../pending-session.js';
import {
  type BrokerState,
  type HandedLease,
  type HandedSession,
  STATE_FORMAT,
  stateVersionFor,
} from './format.js';

/** What the broker lends its upgrade: its servers (in driver.kinds() order), admin and sessions. */
export interface BrokerParts {
  servers: VfioUserServer[];
  admin: AdminServer | null;
  metrics: MetricsServer | null;
  sessions: Map<object, { pending: PendingSession; pidfd: PidFd | null }>;
}

/** Resolves when `ready()` holds, polling every ms; rejects ETIMEDOUT naming `what` past the deadline. */
async function until(what: string, ready: () => boolean, deadline: number): Promise<void> {
  while (!ready()) {
    if (Date.now() > deadline)
      throw new DevleaseError('ETIMEDOUT', `upgrade: ${what} did not finish in time`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/**
 * Quiesce: stop accepting and reading, then wait (bounded) for what is in flight — session requests, admin
 * requests but `exceptAdmin` (the upgrade request itself), reclaims, the driver's own device work, device
 * calls. Rejects (after resuming) if something does not settle before the deadline.
 */
export async function hold(b: Broker, p: BrokerParts, exceptAdmin: number, deadline: number): Promise<void> {
  // First the relayed DMA accesses (lease-dma-relay.ts): new ones fail from here, those in flight end (within
  // 1.5 s) while the lease connections still read their clients' replies — paused, a reply would never come.
  b.leases.relay.hold();
  try {
    await until('relayed DMA accesses in flight', () => b.leases.relay.inFlight === 0, deadline);
    for (const s of p.servers) s.pauseAccepting();
    p.admin?.hold();
    p.metrics?.hold(); // a scrape reads the device; those in progress are among the device calls waited for
    const conns = p.servers.flatMap((s) => [...s.connections]);
    for (const c of conns) c.hold();
    const idle = Promise.all(conns.map((c) => c.idle()));
    let done = false;
    void idle.then(() => {
      done = true;
    });
    await until('requests in progress', () => done, deadline);
    await until('admin requests in progress', () => (p.admin?.inFlight ?? 0) <= exceptAdmin, deadline);
    await b.leases.hold();
    await b.driver.hold?.();
    const dev = b.device;
    if (dev instanceof VfioUserDevice) {
      await until(
        'device calls in progress',
        () => dev.client.pendingCount === 0 && dev.client.commandsWaiting === 0,
        deadline,
      );
      // From here the device's replies are the new broker's to read.
      dev.client.socket.pause();
    }
    // A kernel device's calls are ioctls, done by the time they return: nothing in flight to wait for. Its REQ
    // and ERR signals are left unread from here, in the eventfds the state hands over: one that comes during the
    // transfer is heard by the broker that carries on (device-signals.ts, holdSignals).
    if (dev instanceof KernelDevice) dev.holdSignals();
    // Asked again now that nothing new can start: a recovery that began while the new broker started (a hang
    // the heartbeat saw) runs through the hold, between its device calls, and its next ones would go out on
    // the connection the new broker reads; nor would it hand over a half-booted device as ready.
    const why = cannotUpgrade(b) ?? relayBusy(b);
    if (why) throw new DevleaseError('EAGAIN', `the broker cannot be upgraded now: ${why}`);
  } catch (err) {
    resume(b, p);
    throw err;
  }
}

/** Undo hold(): everything carries on as before (a rollback). Idempotent. */
export function resume(b: Broker, p: BrokerParts): void {
  b.leases.relay.unhold();
  if (b.device instanceof VfioUserDevice) b.device.client.socket.resume();
  if (b.device instanceof KernelDevice) {
    try {
      // Not awaited: a signal whose watch fails is unwired and closed in the background (an ioctl), logged.
      void b.device.unholdSignals();
    } catch (err) {
      b.log(`resuming the device's REQ/ERR watch: ${(err as Error).message}`);
    }
  }
  b.driver.unhold?.();
  b.leases.unhold();
  for (const s of p.servers) for (const c of s.connections) c.unhold();
  p.admin?.unhold();
  p.metrics?.unhold();
  for (const s of p.servers) s.resumeAccepting();
}

/** Why this broker cannot be upgraded live as it is, or null. */
export function cannotUpgrade(b: Broker): string | null {
  const kernel = b.device instanceof KernelDevice;
  if (!(b.device instanceof VfioUserDevice) && !kernel)
    return `live upgrade is implemented for the vfio-user and kernel backends, not ${b.device.transport}`;
  if (!b.driver.handover || !b.driver.adopt || !b.driver.hold)
    return `driver ${b.driver.name} cannot hand its state over`;
  if (b.device instanceof VfioUserDevice && !b.device.connected) return 'the device connection is down';
  if (b.leases.deviceGone) return 'the device connection is down';
  if (b.leases.suspended) return `grants are suspended (${b.leases.suspended})`;
  // Not in the state: a broker that reads it would never unmap them.
  const maybe = b.leases.all().filter((l) => l.maybeMaps.length > 0);
  if (maybe.length)
    return `leases ${maybe.map((l) => l.id).join(', ')} may hold DMA maps the device made after their DMA_MAP timed out: upgrade once they have ended`;
  // The relay's eventfd is the broker's own, wired to the device's INTx: not carried.
  const intx = b.leases.all().filter((l) => l.intx);
  if (intx.length)
    return `leases ${intx.map((l) => l.id).join(', ')} have the device's INTx relayed by this broker (it unmasks the line): upgrade once they have ended`;
  return null;
}

/**
 * Whether the state carries anything of relayed DMA (version 7): a relayed mapping, a device map without an fd
 * (one whose unmap failed outlives its mapping), or a session owed a late reply to a relayed access.
 */
export function carriesRelayedDma(b: Broker): boolean {
  const dev = b.device;
  return (
    b.leases.relay.size > 0 ||
    (dev instanceof VfioUserDevice && dev.client.dmaMapsWithoutFd > 0) ||
    b.leases.all().some((l) => (l.peer?.lateReplies ?? 0) > 0)
  );
}

/**
 * Why a relayed DMA access stands in the way now (EAGAIN: it passes), or null. One in flight is not carried —
 * its reply would come to a process that never asked (lease-dma-relay.ts); a late reply to one that timed out
 * is (the session's peerDma state).
 */
export function relayBusy(b: Broker): string | null {
  const dev = b.device;
  if (dev instanceof VfioUserDevice && dev.client.commandsWaiting > 0)
    return `the device is waiting on ${dev.client.commandsWaiting} DMA access(es) this broker relays: try again`;
  const relaying = b.leases.all().filter((l) => (l.peer?.outstanding ?? 0) > 0);
  if (relaying.length)
    return `leases ${relaying.map((l) => l.id).join(', ')} have relayed DMA accesses in flight: try again`;
  return null;
}

/** The state document and the fds it names by index (still owned by the broker: they are sent as dups). */
export function collect(
  b: Broker,
  p: BrokerParts,
  meta: { startedAt: Date; upgrades: number },
): { doc: BrokerState; fds: Fd[] } {
  const fds: Fd[] = [];
  const add = (fd: Fd): number => fds.push(fd) - 1;
  const device: BrokerState['device'] =
    b.device instanceof KernelDevice
      ? { transport: 'kernel', state: b.device.handover(add) }
      : (() => {
          const dev = (b.device as VfioUserDevice).handover(add);
          return { transport: 'vfio-user', fd: add(dev.fd), state: dev.state };
        })();
  const drv = b.driver.handover!();
  // The audit of direct slices travels once one is handed out (state version 5; format.ts).
  const direct = b.leases.direct?.handingOut ? b.leases.direct.handover() : null;
  const kinds = b.driver.kinds();
  const listening: BrokerState['listening'] = p.servers.map((s, i) => ({
    name: kinds[i]!,
    path: b.sockets.get(kinds[i]!) ?? s.path ?? '',
    type: 'stream',
    fd: add(s.listeningFd!),
  }));
  const admin = p.admin?.handover();
  if (admin && p.admin)
    listening.push({ name: 'admin', path: p.admin.path, type: 'seqpacket', fd: add(admin.listening) });
  const sessions: HandedSession[] = [];
  p.servers.forEach((server, i) => {
    for (const conn of server.connections) {
      if (conn.closing) continue;
      const socket = conn.socket as unknown as StreamSocket;
      const entry = p.sessions.get(socket);
      const partial = socket.partial();
      const adopted = conn.handover();
      sessions.push({
        kind: kinds[i]!,
        fd: add(socket.fd),
        pidfd: entry?.pidfd && !entry.pidfd.closed ? add(entry.pidfd.fd) : null,
        partial: partial.data.toString('base64'),
        partialFds: partial.fds.map(add),
        lease: adopted ? (entry?.pending.session?.lease.id ?? null) : null,
        adopted,
        devlease: entry?.pending.session?.devlease ?? false,
        pci: adopted ? (entry?.pending.session?.pciState() ?? null) : null,
      });
    }
  });
  const deferred = b.leases.deferredReclaims;
  const list: HandedLease[] = b.leases.all().map((l) => ({
    id: l.id,
    request: l.request,
    ctx: l.ctx,
    resources: l.resources,
    createdAt: l.createdAt,
    state: l.state,
    endReason: l.endReason,
    quarantineReason: l.quarantineReason,
    deadline: l.deadline,
    mappings: [...l.mappings.values()],
    // Units still held: a quarantine let go of its lease's (their fds closed, the lease still lists them),
    // and there is nothing of them left to hand over.
    slices: [...l.slices.entries()]
      .map(([r, units]) => [r, units.filter((u) => !u.deviceFd.closed)] as const)
      .filter(([, units]) => units.length > 0)
      .map(([r, units]) => [
        r,
        units.map((u) => ({
          fd: add(u.deviceFd),
          outstanding: u.outstanding,
          ownOpens: u.ownOpens,
          ...(u.countLost ? { countLost: true } : {}),
        })),
      ]),
    errFd: l.errFd && !l.errFd.closed ? add(l.errFd) : null,
    reqFd: l.reqFd && !l.reqFd.closed ? add(l.reqFd) : null,
    noticeFd: l.noticeFd && !l.noticeFd.closed ? add(l.noticeFd) : null,
    faults: l.faults,
    faultsTotal: l.faultsTotal,
    reclaim: deferred.get(l) ?? null,
  }));
  const doc: BrokerState = {
    format: STATE_FORMAT,
    version: stateVersionFor(
      b.device,
      !!direct,
      b.leases.withSliceCountLost().length > 0,
      carriesRelayedDma(b),
    ),
    broker: { pid: process.pid, startedAt: meta.startedAt.toISOString(), upgrades: meta.upgrades },
    device,
    driver: { name: b.driver.name, state: drv.state, fds: drv.fds.map(add) },
    listening,
    metrics: p.metrics ? { listen: b.config.metrics.listen!, fd: add(p.metrics.handoverFd()) } : null,
    admin: { connections: (admin?.connections ?? []).map(add), upgradeAsker: admin?.asker ?? null },
    leases: {
      nextId: b.leases.idSequence,
      draining: b.leases.draining,
      list,
      sliceWatch: b.leases.watcher.fd ? add(b.leases.watcher.fd) : null,
      ...(direct ? { direct } : {}),
    },
    sessions,
    audit: { recent: b.audit.recent.slice(-100) },
  };
  return { doc, fds };
}
