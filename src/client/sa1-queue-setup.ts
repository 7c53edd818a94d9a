// Setting up an Sa1Queue (cold: once per queue, never per descriptor): the options checked, the queue
// reset unless the grant left it clean, and the doorbell's kick fd and the rings asked of the broker in one
// round trip. Sa1Queue (sa1-queue.ts) takes what this returns and programs the queue page.

import { QP_REGISTERS_END } from '../hw/sa1/datasheet.js';
import { BAR2, CQE_SIZE, QP, SQE_SIZE } from '../hw/sa1/regs.js';
import type { Fd, Mapping } from '../sys/index.js';
import type { DmaBuffer } from './dma.js';
import { leaseError } from './errors.js';
import { kickFdProblem } from './io-event-fds.js';
import type { Lease } from './lease.js';

/** Default bound on a descriptor's completion: far above any descriptor's run time (16 MiB at memory speed). */
export const DEFAULT_COMPLETION_TIMEOUT_MS = 10_000;

export interface QueueOptions {
  /** Ring entries (power of two, 2..65536). Default 256. */
  entries?: number;
  /** Busy-wait this long for a completion before sleeping on the interrupt. Default 50 µs. */
  spinUs?: number;
  /**
   * Kick the device's ioeventfd when Q_NOTIFY asks for it (datasheet rev 2). Default true; false leaves
   * the device to find doorbells by its idle poll (the rev 1 behaviour, kept for comparisons).
   */
  kick?: boolean;
  /**
   * A descriptor not completed this long after submission (ms) fails with ETIMEDOUT, and so does everything
   * submitted after it (the device completes a queue in order): a device that stopped answering is not
   * waited on forever. Default 10 000.
   */
  completionTimeoutMs?: number;
}

/** What a new Sa1Queue is made of: the checked options, its rings (one DMA buffer) and its kick fd. */
export interface QueueSetup {
  entries: number;
  spinUs: number;
  timeoutMs: number;
  rings: DmaBuffer;
  /** The queue page's ioeventfd (the lease owns it), or null when the device offers none or kick is off. */
  kick: Fd | null;
}

/** Check the options, make sure the queue is clean, and allocate the rings in leased memory. */
export async function setUpQueue(lease: Lease, opts: QueueOptions): Promise<QueueSetup> {
  const entries = opts.entries ?? 256;
  if (entries < 2 || entries > 65536 || (entries & (entries - 1)) !== 0) {
    throw leaseError('EINVAL', `ring entries must be a power of two from 2 to 65536, got ${entries}`);
  }
  const timeoutMs = opts.completionTimeoutMs ?? DEFAULT_COMPLETION_TIMEOUT_MS;
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs <= 0) {
    throw leaseError('EINVAL', `completionTimeoutMs must be a positive integer (ms), got ${timeoutMs}`);
  }
  // Start from a clean queue: the device latches ring registers at the first doorbell after enable and
  // ignores later writes until a reset, so a second helper on the same lease needs the reset too. The
  // first helper of a lease whose queue page is still as the grant left it (reset, nothing rung) skips it.
  // The first helper of a lease sends its requests before the lease's own setup replies are in (a lease
  // connected with deferSetup): they share its round trip. A later one resets the queue first.
  const first = lease.claimFresh();
  if (!first) {
    await lease.ready;
    await lease.resetQueue();
  }
  // The kick fd and the rings are asked for at once (one round trip to the broker, which serves them in
  // order); the rings are one buffer, so one DMA_MAP, which the broker relays to the device: a map per ring
  // was a device round trip more per queue. Whatever came is freed if any failed. The doorbell's kick
  // (rev 2): the lease owns the fd. The CQ starts at entries × 64 bytes: 16-byte aligned, as the
  // datasheet's section 2.3 asks.
  const asked = Promise.allSettled([
    opts.kick === false ? Promise.resolve(null) : lease.ioEventFd(BAR2, QP.SQ_TAIL),
    lease.dma.alloc(entries * (SQE_SIZE + CQE_SIZE)),
  ]);
  const [setup] = await Promise.allSettled([lease.ready]);
  const [kick, rings] = await asked;
  if (setup.status === 'rejected' || kick.status === 'rejected' || rings.status === 'rejected') {
    if (rings.status === 'fulfilled') await rings.value.free().catch(() => undefined);
    throw [setup, kick, rings].find((r): r is PromiseRejectedResult => r.status === 'rejected')!.reason;
  }
  // The page's size is the broker's word (REGION_INFO): one too short for the registers the queue stores into
  // and reads made a RangeError of the first access, and left the rings allocated. Any failure from here frees
  // the rings.
  try {
    // The kick is a write(2) on the submit path to an fd the server chose (io-event-fds.ts, kickFdProblem).
    const problem = kick.value && kickFdProblem(kick.value);
    if (problem) {
      throw leaseError(
        'EPROTO',
        `the queue's doorbell kick fd (region ${BAR2} io fd at 0x${QP.SQ_TAIL.toString(16)}) is refused: ${problem}; it must be a non-blocking eventfd`,
      );
    }
    const pageBytes = lease.region(BAR2).length; // ENOENT: not mapped (no fd for it)
    if (pageBytes < QP_REGISTERS_END) {
      throw leaseError(
        'EPROTO',
        `the queue page (region ${BAR2}) is ${pageBytes} bytes, smaller than the SA-1 queue registers (${QP_REGISTERS_END})`,
      );
    }
    // Found as the grant left it (reset, nothing rung), the queue needs no reset; else it gets one now. A queue
    // reset keeps the windows and the device keeps its DMA mappings (datasheet §9): the rings stay mapped.
    if (first && !untouched(lease.region(BAR2))) await lease.resetQueue();
  } catch (err) {
    await rings.value.free().catch(() => undefined);
    throw err;
  }
  return { entries, spinUs: opts.spinUs ?? 50, timeoutMs, rings: rings.value, kick: kick.value };
}

/** Whether a queue page reads as a queue reset leaves it: no rings set, nothing rung, no error. */
function untouched(page: Mapping): boolean {
  if (page.isRevoked()) return false;
  const w = page.u32;
  const words = [QP.SQ_BASE, QP.SQ_BASE + 4, QP.SQ_SIZE, QP.SQ_TAIL, QP.SQ_HEAD, QP.CQ_BASE, QP.CQ_BASE + 4];
  words.push(QP.CQ_SIZE, QP.CQ_HEAD, QP.CQ_TAIL, QP.Q_ERROR, QP.IRQ_MODE);
  return words.every((off) => Atomics.load(w, off / 4) === 0);
}
