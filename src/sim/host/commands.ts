// Requests from the simulator's front end to its device worker: the owner
// commands the device itself must act on (register accesses that only read
// or store register state never come here). They cross the threads in the
// mailbox's shared slots (mailbox.ts, command-slots.ts): numbers, bigints as
// u64, register data as inline bytes, fds as process-wide numbers; a DMA
// map's shared buffer, injections and stats by structured clone.

export type InjectRequest =
  /**
   * Hang now; with `on: 'firmware-load'`, hang instead at each of the next `count` (default 1) firmware loads
   * the device starts (FW_CMD): a hang in the middle of a recovery.
   */
  | { kind: 'hang'; on?: 'firmware-load'; count?: number }
  | { kind: 'fault'; queue: number; code?: number; iova?: bigint }
  | { kind: 'delay'; ms: number; queue?: number }
  /**
   * The device worker stops for `ms` (at most 60 000) right after answering: serves nothing, runs no queue.
   * For tests of what must not wait on the worker (a queue page's revoke kills the holder's mapping first).
   */
  | { kind: 'stall'; ms: number }
  /**
   * The next error — a descriptor completing with a data fault (§4), a firmware load failing (§6) — shows
   * its state (Q_ERROR and Q_STATUS.ERROR; FW_STATUS) only `ms` (at most 60 000) after what it wrote (the
   * completion, the fault record): a client must take a fatal completion itself as ERROR.
   */
  | { kind: 'errorLag'; ms: number }
  /**
   * The next completion holds `ms` (at most 60 000) between its CQE (with SQ_HEAD, Q_COMPLETED, Q_BYTES, all
   * stored before it) and CQ_TAIL, its interrupt and whatever the device does next.
   */
  | { kind: 'completionLag'; ms: number }
  | { kind: 'dropIrq'; count: number; index?: number; vector?: number }
  /** Q_CTRL.RESET of `queue` (none: CONTROL.RESET and every queue's) never finishes; `clear` ends that. */
  | { kind: 'stuckReset'; queue?: number; clear?: boolean };

export type DeviceRequest =
  /** Accesses with device side effects or device-held memory: BAR2, BAR4, CONTROL, FW_CMD, Q_CTRL, PCI_COMMAND. */
  | { op: 'regionRead'; index: number; offset: number; count: number }
  | { op: 'regionWrite'; index: number; offset: number; data: Uint8Array }
  /**
   * One-way posts (mailbox.post): a map or unmap the front end has checked against its copy of the table
   * and already answered. `mapPosted` carries the front end's mapping (its shared buffer, and its address
   * for the guard's revoked flag); the front end unmaps it.
   */
  | {
      op: 'mapPosted';
      buffer: SharedArrayBuffer;
      address: bigint;
      iova: number;
      size: number;
      read: boolean;
      write: boolean;
    }
  /** One-way: a map without an fd (datasheet rev 2 §7), reached through the owner (remote-dma.ts). */
  | { op: 'remoteMapPosted'; iova: number; size: number; read: boolean; write: boolean }
  | { op: 'unmapPosted'; iova: bigint; size: bigint; all: boolean }
  /**
   * One-way: the owner stored SQ_TAIL through BAR2 on the front end (slice-access.ts); only wakes the device,
   * which then sees the doorbell in its next round.
   */
  | { op: 'doorbell' }
  /** One-way: the front end handed out the kick fds; wakes the device so it sleeps on them from now on. */
  | { op: 'kicksHandedOut' }
  /** One-way: the front end set Q_CTRL.ENABLE of a disabled, idle queue (bar0.ts queueControlDirect). */
  | { op: 'queueEnabled'; queue: number }
  | { op: 'reset' }
  /** fault: truncate the old memory so every mapping of it faults (false: only detach the device from it). */
  | { op: 'revoke'; fd: number; fault: boolean }
  /** The front end renewed queue page `queue` with the spare (page-revoke.ts): reset the queue, adopt it. */
  | { op: 'pageRenewed'; queue: number }
  | { op: 'disconnect' }
  | { op: 'inject'; inject: InjectRequest }
  | { op: 'stats' }
  /** Stop the device loop (taken only between rounds, never inside one). */
  | { op: 'shutdown' };

export interface DeviceStats {
  /** Rounds that did work / that found nothing. */
  busyRounds: number;
  idleRounds: number;
  /**
   * Idle sleeps of one idle poll interval (Atomics.wait on the request word), or shorter while a spare page is
   * wanted (worker.ts tidyWhenQuiet; a deep sleep so shortened counts here too).
   */
  sleeps: number;
  /** Sleeps until the next owner command, taken when no queue could act on a doorbell. */
  deepSleeps: number;
  /** Sleeps with KICK_NEEDED armed and nothing waiting: until kicked, or the armed poll interval (or less, as above). */
  armedSleeps: number;
  /**
   * Armed sleeps that ran to their timeout (no kick, no wake-up), after which the next round found a
   * doorbell: a client that does not kick, served by the armed poll, or a lost wake-up. Zero while every
   * client kicks as Q_NOTIFY asks.
   */
  armedPollFinds: number;
  /** Requests the device worker has served (this one included): owner commands that needed the device. */
  commands: number;
  /** One-way posts taken (DMA table updates the front end answered itself). */
  posts: number;
  /** Posts the device refused (never, as the front end checked them against the same table). */
  postFailures: number;
  dmaMaps: number;
  firmwareRunning: boolean;
  /**
   * Device accesses to owner memory that came without an fd (DMA_READ/DMA_WRITE through the front end,
   * remote-dma.ts; one per piece of at most 1 MiB), and those that failed (the owner refused, did not answer
   * in time, unmapped the range or left).
   */
  remoteAccesses: number;
  remoteFailures: number;
  /**
   * The front end's (not the worker's): mmap calls it took to drop the maps it let go of (DMA_UNMAPs, and every
   * map at once when the owner leaves or the device stops), one per run of adjacent maps; and how many maps
   * went where they were placed, next to an IOVA neighbour or in a run slot, against those it left to the
   * kernel (dma-placement.ts).
   */
  dmaUnmapCalls: number;
  dmaMapsPlaced: number;
  dmaMapsUnplaced: number;
  /** The front end's: maps without an fd in the table (the device reaches them through the owner). */
  dmaMapsRemote: number;
  /**
   * The front end's: spare page memory is offered, so the next queue page revoke kills its holder's mapping on
   * the front end (page-revoke.ts). The worker makes the next spare once the device is quiet after a revoke
   * took the last (worker.ts tidyWhenQuiet).
   */
  spareReady: boolean;
}

/** What the worker counts (DeviceStats less the front end's own). */
export type WorkerStats = Omit<
  DeviceStats,
  'dmaUnmapCalls' | 'dmaMapsPlaced' | 'dmaMapsUnplaced' | 'dmaMapsRemote' | 'spareReady'
>;
