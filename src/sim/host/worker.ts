// The device: a worker thread that runs the queue engine and serves the
// owner commands the device must act on. Its register state is the register
// file it shares with the front end (which answers register accesses
// itself); the rest (in-flight descriptors, IOMMU, slices) is its own. It
// polls the queue pages, spinning while there is work and sleeping on the
// mailbox's request word for the idle poll interval when a full round found
// none (so an owner command wakes it at once). Owner commands are served
// between descriptors.

import { type MessagePort, parentPort, workerData } from 'node:worker_threads';
import { type DevleaseError, ERRNO, errnoNumber, VfioError } from '../../errors.js';
import { native } from '../../sys/index.js';
import { sleepSync } from '../../util/sleep-sync.js';
import { Q_CTRL, Q_CTRL_ENABLE, Q_NOTIFY_KICK_NEEDED, QP_Q_NOTIFY } from '../model/datasheet.js';
import { Sa1Device } from '../model/device.js';
import type { DmaMapping } from '../model/iommu.js';
import { MemfdBacking } from '../model/memfd-backing.js';
import type { Sa1Options } from '../model/options.js';
import { ARMED, armKicks, disarmKicks, pollingNeeded, RACED } from '../model/poller.js';
import { RegisterFile, sharedClock } from '../model/register-file.js';
import { deviceRequestSlots } from './command-slots.js';
import type { DeviceRequest, InjectRequest, WorkerStats } from './commands.js';
import { IrqTable } from './irq-table.js';
import type { Envelope, WireError } from './mailbox.js';
import { closeWaitSet, MailboxDevice, openWaitSet } from './mailbox-device.js';
import { PageTable } from './page-revoke.js';
import { RemoteDmaDevice } from './remote-dma.js';

export interface WorkerInit {
  options: Sa1Options;
  /** The mailbox's words, request slots and reply area. */
  mailbox: SharedArrayBuffer;
  /** The device's end of the port, for requests and replies that do not fit a slot. */
  port: MessagePort;
  /** The register file the front end reads too. */
  registers: SharedArrayBuffer;
  /** The irq eventfd numbers the front end stores (irq-table.ts). */
  irqs: SharedArrayBuffer;
  /** The kick ioeventfds (one per queue page, up to MAX_FDS: io-fds.ts), made by the front end; the device's. */
  kickFds: number[];
  /** Where the backing publishes its slices' memfd numbers (memfd-backing.ts), for the front end. */
  sliceFds: SharedArrayBuffer;
  /** Queue page addresses, inodes and the spare page memory, for the front end's revoke (page-revoke.ts). */
  pages: SharedArrayBuffer;
  /** Where the device asks the front end for owner memory that came without an fd (remote-dma.ts). */
  remoteDma: SharedArrayBuffer;
}

const init = workerData as WorkerInit;
const options = init.options;
const mailbox = new MailboxDevice<DeviceRequest>(init.mailbox, init.port, deviceRequestSlots);
const backing = new MemfdBacking(options, new Int32Array(init.sliceFds), new PageTable(init.pages));
/** eventfd numbers per VFIO irq index and vector (-1: none). The front-end owns the Fd objects. */
const irqs = new IrqTable(init.irqs, options.numQueues);
const device = new Sa1Device(
  options,
  backing,
  {
    // HEARTBEAT counts on the clock the front end reads it with.
    now: sharedClock,
    interrupt(index, vector) {
      irqs.deliver(index, vector);
    },
  },
  new RegisterFile(init.registers),
);
const revokedInodes = new Set<bigint>();
/** Owner memory without an fd (datasheet rev 2 §7), through the front end's DMA_READ/DMA_WRITE. */
const remote = new RemoteDmaDevice(init.remoteDma, () => mailbox.lastTaken);
// Doorbell notification (datasheet §2.3 rev 2): the queues' ioeventfds (the front end made them and hands out
// dups with GET_REGION_IO_FDS) and the wake eventfd the mailbox writes while the device sleeps on them, in one
// wait set made once; the device owns all of them for its lifetime.
const waitSet = openWaitSet(init.kickFds);
const stats: WorkerStats = {
  busyRounds: 0,
  idleRounds: 0,
  sleeps: 0,
  deepSleeps: 0,
  armedSleeps: 0,
  armedPollFinds: 0,
  commands: 0,
  posts: 0,
  postFailures: 0,
  dmaMaps: 0,
  firmwareRunning: false,
  remoteAccesses: 0,
  remoteFailures: 0,
};
/** An injected stall still to take after the current answer (inject 'stall'). */
let stallMs = 0;
/** The shutdown request, once taken: answered after the loop stops. */
let shutdownSeq: number | null = null;

function asVfioError(err: unknown): VfioError | null {
  if (err instanceof VfioError) return err;
  const code = (err as { code?: unknown })?.code;
  const errno = typeof code === 'string' ? errnoNumber(code) : undefined;
  if (errno !== undefined) {
    // A refusal from below (a SysError from an mmap, say): its reason field if it has one, else its message.
    const e = err as DevleaseError;
    return new VfioError(code as string, e.reason ?? e.message, errno, { cause: err });
  }
  return null;
}

function release(maps: DmaMapping[]): void {
  for (const m of maps) m.release();
}

const nothing = (): void => {};

/** A map the front end checked, mapped and answered: its memory, through the front end's shared buffer. */
function mapPosted(r: Extract<DeviceRequest, { op: 'mapPosted' }>): void {
  const { address } = r;
  device.dmaMap({
    iova: r.iova,
    size: r.size,
    readable: r.read,
    writable: r.write,
    view: new Uint8Array(r.buffer),
    revoked: () => native.guardRevokedAt(address),
    release: nothing, // the front end unmaps it once the device let go
  });
}

/** A map without an fd (datasheet rev 2 §7): the owner's memory, reached through messages (remote-dma.ts). */
function remoteMapPosted(r: Extract<DeviceRequest, { op: 'remoteMapPosted' }>): void {
  device.dmaMap({
    iova: r.iova,
    size: r.size,
    readable: r.read,
    writable: r.write,
    view: new Uint8Array(0),
    remote,
    release: nothing,
  });
}

/**
 * A translation missed (iommu.ts onMiss): apply the posts waiting at the head of the ring, among them the
 * maps the front end answered before any descriptor using them could be submitted. Posts that are safe in
 * the middle of a descriptor (maps, an enable, the kick-fd wake) are applied; it stops at an unmap (taken
 * between descriptors, never inside one: the front end waits for that when the engine is in a round) and
 * at a request.
 */
function applyWaitingPosts(): boolean {
  let applied = false;
  while (mailbox.pending) {
    const env = mailbox.take();
    if (!env) break;
    if (env.seq !== 0 || env.req.op === 'unmapPosted') {
      mailbox.putBack(env);
      break;
    }
    stats.posts++;
    applyPosted(env.req);
    mailbox.taken(env.n);
    applied = true;
  }
  return applied;
}
device.iommu.onMiss = applyWaitingPosts;

function inject(i: InjectRequest): void {
  switch (i.kind) {
    case 'hang':
      if (i.on === 'firmware-load') device.hangOnFirmwareLoad(i.count ?? 1);
      else device.injectHang();
      return;
    case 'fault':
      device.injectFault(i.queue, i.code, i.iova);
      return;
    case 'delay':
      device.setDescriptorDelay(i.ms, i.queue);
      return;
    case 'dropIrq':
      device.dropInterrupts(i.count, i.index, i.vector);
      return;
    case 'stuckReset':
      device.setStuckReset(!i.clear, i.queue);
      return;
    case 'stall':
    case 'errorLag':
    case 'completionLag':
      if (!Number.isInteger(i.ms) || i.ms < 0 || i.ms > 60_000) {
        throw new VfioError('EINVAL', `${i.kind} ms must be an integer 0..60000, got ${i.ms}`);
      }
      if (i.kind === 'stall') stallMs = i.ms;
      else if (i.kind === 'errorLag') device.setErrorLag(i.ms);
      else device.setCompletionLag(i.ms);
      return;
  }
}

function handle(r: DeviceRequest): unknown {
  switch (r.op) {
    case 'regionRead':
      return device.regionRead(r.index, r.offset, r.count);
    case 'regionWrite':
      return device.regionWrite(r.index, r.offset, r.data);
    case 'mapPosted':
      return mapPosted(r);
    case 'remoteMapPosted':
      return remoteMapPosted(r);
    case 'kicksHandedOut':
      return; // the flag is in the mailbox words; the post only woke the loop
    case 'doorbell':
      return; // the post only woke the loop: its next round sees SQ_TAIL
    case 'queueEnabled': {
      // The front end stored ENABLE; requests posted after this one (a disable, a reset) come after it.
      const q = device.queues[r.queue];
      if (q && !q.enabled && device.regs.load(q.qcfgAt + Q_CTRL) === Q_CTRL_ENABLE) {
        q.enabled = true;
        // The front end may have stored KICK_NEEDED in the page (bar0-access.ts #queueEnabled) for a device
        // asleep on its fds. Taking this post means the device is awake, so the flag goes now: left set, it
        // would make the holder kick on every doorbell until the next armed sleep, which a spinning device
        // (idle poll 0) never takes. Before any sleep armKicks() sets it again and looks at SQ_TAIL once more.
        if (Atomics.load(q.words, QP_Q_NOTIFY / 4) & Q_NOTIFY_KICK_NEEDED) q.setKickNeeded(false);
      }
      return;
    }
    case 'unmapPosted':
      return release(device.dmaUnmap(Number(r.iova), Number(r.size), r.all));
    case 'reset':
      return device.reset();
    case 'revoke': {
      const { ino } = native.fstat(r.fd);
      const slice = backing.findByInode(ino);
      if (!slice) {
        if (revokedInodes.has(ino)) return; // already revoked: nothing left to take back
        throw new VfioError('ENOENT', 'the fd is not a slice of this device');
      }
      device.revokeSlice(slice, { fault: r.fault });
      revokedInodes.add(ino);
      return;
    }
    case 'pageRenewed': {
      // The holder's mapping is already dead (the front end truncated the old memory); the page the engine
      // now reads is a copy of the old registers until this reset zeroes it.
      // Adopted first: the reset zeroes the page through the backing's memfd of it (zeroPage), the new one.
      revokedInodes.add(backing.adoptSpare(r.queue));
      device.resetQueue(device.queues[r.queue]!);
      return;
    }
    case 'disconnect': {
      release(device.ownerDisconnected());
      return;
    }
    case 'inject':
      return inject(r.inject);
    case 'stats':
      return {
        ...stats,
        dmaMaps: device.iommu.maps.length,
        firmwareRunning: device.firmware.running,
        remoteAccesses: remote.accesses,
        remoteFailures: remote.failures,
      };
    case 'shutdown':
      throw new Error('shutdown is served by the device loop');
  }
}

function wireError(err: unknown): WireError {
  const v = asVfioError(err);
  if (v) return { code: v.code, errno: v.errno, reason: v.reason };
  return { code: 'EIO', errno: ERRNO.EIO, reason: `device error: ${(err as Error)?.stack ?? String(err)}` };
}

/** Serve every waiting request and post; a shutdown is kept for the loop to act on. */
function serve(): void {
  for (let env = mailbox.take(); env; env = mailbox.pending ? mailbox.take() : null) {
    if (env.seq === 0) {
      stats.posts++;
      applyPosted(env.req);
      mailbox.taken(env.n);
      continue;
    }
    stats.commands++;
    if (env.req.op === 'shutdown') {
      shutdownSeq = env.seq;
      return;
    }
    serveOne(env);
    mailbox.taken(env.n);
  }
}

/** A post was validated by the front end, which answered already: a refusal here has nobody to go to. */
function applyPosted(req: DeviceRequest): void {
  try {
    handle(req);
  } catch {
    stats.postFailures++;
  }
}

function serveOne({ seq, req }: Envelope<DeviceRequest>): void {
  let value: unknown;
  try {
    value = handle(req);
  } catch (err) {
    mailbox.answer(seq, { error: wireError(err) });
    return;
  }
  mailbox.answer(seq, { value });
  if (stallMs > 0) {
    // An injected stall (InjectRequest 'stall'): answered above, then nothing for its time.
    sleepSync(stallMs);
    stallMs = 0;
  }
}

function serveBetweenDescriptors(): void {
  if (mailbox.pending && shutdownSeq === null) serve();
}

/** How long the device must have taken no command before it makes what no command waits for. */
const QUIET_MS = 0.2;
/** How long such work waits for quiet at most: a device never quiet that long makes it anyway. */
const TIDY_WAIT_MAX_MS = 2;
/** Posts and commands taken at the last look, when that count last moved, and when the work was first seen wanted. */
let takenAtLastLook = -1;
let lastTakenAt = 0;
let wantedSince = -1;

/**
 * Work no command waits for, done once the device has taken no command since a look QUIET_MS ago, or once it has
 * waited TIDY_WAIT_MAX_MS for that. Returns the longest the device may sleep before it looks again: what is left
 * of QUIET_MS while such work waits, so that it is done a fraction of a millisecond after the last command, not at
 * the next armed poll (10 ms) or never (a sleep no doorbell can end). Today that work is the next spare page memory
 * after a revoke took the last: made inside the revoke, its memfd_create, open and ftruncate delayed the revoke's
 * answer and the reclaim's quiesce behind it by 90-145 µs (issue 16, seventeenth pass). A failure leaves the front
 * end without a spare, which hands the next queue page revoke to this thread whole.
 */
function tidyWhenQuiet(): number {
  if (!backing.spareWanted) {
    wantedSince = -1;
    return Number.POSITIVE_INFINITY;
  }
  const now = performance.now();
  if (wantedSince < 0) wantedSince = now;
  const taken = stats.commands + stats.posts;
  if (taken !== takenAtLastLook) {
    takenAtLastLook = taken;
    lastTakenAt = now;
  }
  const quietFor = now - lastTakenAt;
  if (quietFor < QUIET_MS && now - wantedSince < TIDY_WAIT_MAX_MS) return QUIET_MS - quietFor;
  wantedSince = -1;
  try {
    backing.makeSpare();
  } catch {
    // spareWanted stays false until the next revoke
  }
  return Number.POSITIVE_INFINITY;
}

function run(): void {
  const idleMs = options.idlePollUs / 1000;
  /** An armed sleep's timeout: never shorter than the idle poll interval (docs/SA-1.md, "Doorbell notification"). */
  const armedMs = Math.max(idleMs, options.armedPollUs / 1000);
  /** The last sleep was armed and ran to its timeout: a doorbell found now was not kicked. */
  let armedTimedOut = false;
  for (;;) {
    // Inside the round (epoch odd) from before the look for posts until the last access: an unmap posted
    // while the epoch is even is taken before this round touches any mapped memory.
    mailbox.enterRound();
    if (mailbox.pending) serve();
    if (shutdownSeq !== null) {
      mailbox.leaveRound();
      break;
    }
    const busy = device.step(serveBetweenDescriptors);
    mailbox.leaveRound();
    if (busy) {
      if (armedTimedOut) stats.armedPollFinds++;
      armedTimedOut = false;
      stats.busyRounds++;
      // A device busy with descriptors has no idle look: it tidies between rounds (spareWanted is a field read).
      if (backing.spareWanted) tidyWhenQuiet();
      continue;
    }
    armedTimedOut = false;
    if (shutdownSeq !== null) break;
    stats.idleRounds++;
    // Spinning (idle poll 0): the look for a reason to sleep (delayed work, no queue able to run) costs a
    // walk over every queue; every 256th idle round is soon enough for a sleep nobody waits on, and keeps
    // the time between two looks at a doorbell down to the round itself.
    if (idleMs === 0 && (stats.idleRounds & 255) !== 0) continue;
    const tidyInMs = tidyWhenQuiet();
    const due = device.nextDueInMs(); // after the tidy, which may have taken a while
    if (due === null && !pollingNeeded(device)) {
      // No queue can take a doorbell: sleep until an owner command (which may enable one) arrives, or until
      // it is time to tidy.
      if (tidyInMs === Number.POSITIVE_INFINITY) stats.deepSleeps++;
      else stats.sleeps++;
      mailbox.sleep(tidyInMs);
      continue;
    }
    if (idleMs === 0) continue;
    // About to sleep: set KICK_NEEDED, then look at every SQ_TAIL once more (§2.3).
    const arm = armKicks(device);
    if (arm === RACED) {
      disarmKicks(device);
      continue;
    }
    stats.sleeps++;
    // Nobody can kick (no fd handed out) or a full CQ waits for CQ_HEAD: the idle poll interval.
    // Otherwise sleep until kicked, still polling at the armed interval for clients that never kick.
    const kicksHandedOut = mailbox.kicksHandedOut;
    const pollMs = kicksHandedOut && arm === ARMED ? armedMs : idleMs;
    const ms = Math.min(due === null ? pollMs : Math.min(pollMs, due), tidyInMs);
    if (kicksHandedOut) {
      if (arm === ARMED) stats.armedSleeps++;
      // Only a sleep of the whole armed interval counts: a tidy's shorter one that finds a doorbell may hide a lost
      // kick, but it is not the armed poll finding it.
      armedTimedOut = !mailbox.sleepOnFds(waitSet, ms) && arm === ARMED && due === null && ms === pollMs;
    } else {
      mailbox.sleep(ms);
    }
    disarmKicks(device);
  }
  // Shutdown: drop every mapping and slice, then answer.
  release(device.iommu.remove(0, 0, true));
  backing.close();
  closeWaitSet(waitSet);
  mailbox.answer(shutdownSeq, {});
}

parentPort?.postMessage({ ready: true });
run();
