// Programming one SA-1 queue through BAR0: its reset (Q_CTRL.RESET until it reads 0), the grant's
// configuration writes (the windows, Q_XLAT, device memory and vector, then ENABLE), and the wait for a
// quiesced queue to go IDLE. Each is a few register commands with a bound; the driver (driver.ts) keeps
// the state around them: which queues are clean, which are quarantined.

import type { Device } from '../../device/device.js';
import { batchCommands } from '../../device/vfio-user-device.js';
import { BAR0, Q, Q_CTRL, Q_STATUS, qcfg } from '../../hw/sa1/regs.js';
import type { LeaseResources } from '../driver.js';
import { PollTimeoutError, pollUntil } from '../poll.js';
import type { QcfgShadow, QcfgWrite } from './qcfg-shadow.js';

/** What a queue reset's wait names when it runs out (the driver quarantines a queue on it). */
export const resetWhat = (q: number): string => `sa1: queue ${q} reset (Q_CTRL.RESET)`;
const idleWhat = (q: number): string => `sa1: queue ${q} quiesce (Q_STATUS.IDLE)`;

/** Q_CTRL.RESET, then its reads until RESET reads 0, bounded by `timeoutMs` (ETIMEDOUT past it). */
export async function resetQueueRegisters(d: Device, q: number, timeoutMs: number): Promise<void> {
  // The first read goes out with the write (in order on the wire): one round trip when the reset is quick.
  // Both in one sendmsg (batchCommands): one wake-up of the device.
  await batchCommands(d, () =>
    Promise.all([
      d.write32(BAR0, qcfg(q, Q.CTRL), Q_CTRL.RESET),
      pollUntil({
        what: resetWhat(q),
        read: () => d.read32(BAR0, qcfg(q, Q.CTRL)),
        done: (v) => (v & Q_CTRL.RESET) === 0,
        timeoutMs,
      }),
    ]),
  );
}

/**
 * A quiesce: Q_CTRL.RESET with ENABLE 0, then reads until RESET reads 0 and Q_STATUS reports IDLE, bounded by
 * `timeoutMs`. Q_CTRL and Q_STATUS are adjacent (QCFG 0x00, 0x04), so each read is one naturally aligned
 * 8-byte access (datasheet §2: register accesses are 4 or 8 bytes) answering both: one device command a
 * reclaim does not send. Past the bound, ETIMEDOUT names what did not finish — the reset (resetWhat) first,
 * else the wait for IDLE — with that register's last value, as two separate waits would.
 */
export async function quiesceQueueRegisters(d: Device, q: number, timeoutMs: number): Promise<void> {
  const ctrl = (v: bigint) => Number(v & 0xffff_ffffn);
  const status = (v: bigint) => Number(v >> 32n);
  try {
    await batchCommands(d, () =>
      Promise.all([
        d.write32(BAR0, qcfg(q, Q.CTRL), Q_CTRL.RESET),
        pollUntil({
          what: resetWhat(q),
          read: () => d.read64(BAR0, qcfg(q, Q.CTRL)),
          done: (v) => (ctrl(v) & Q_CTRL.RESET) === 0 && (status(v) & Q_STATUS.IDLE) !== 0,
          timeoutMs,
        }),
      ]),
    );
  } catch (err) {
    if (!(err instanceof PollTimeoutError)) throw err;
    const last = err.lastValue as bigint;
    const hex = (v: number) => `0x${(v >>> 0).toString(16)}`;
    if (ctrl(last) & Q_CTRL.RESET)
      throw new PollTimeoutError(resetWhat(q), ctrl(last), timeoutMs, hex(ctrl(last)));
    throw new PollTimeoutError(idleWhat(q), status(last), timeoutMs, hex(status(last)));
  }
}

/** Write a clean queue's configuration for lease `res` and enable it (see the comment within). */
export async function programQueue(
  d: Device,
  shadow: QcfgShadow,
  q: number,
  res: LeaseResources,
): Promise<void> {
  // The writes go out together (the device serves one connection's requests in order), so the grant pays
  // one device round trip, and only the registers whose value changes are written (qcfg-shadow.ts): the
  // same queue on the same window is granted again with ENABLE alone. ENABLE is last on the wire; should
  // any write before it fail, the queue is disabled again, its registers unknown and it is left out of the
  // clean set, so the next grant resets it and writes them all.
  // The window is the one the client sees (its view), and Q_XLAT takes the view to the lease's device range.
  const view = res.view!;
  const want: QcfgWrite[] = [
    { offset: Q.WIN_BASE, width: 64, value: view.base },
    { offset: Q.WIN_SIZE, width: 64, value: view.size },
    { offset: Q.XLAT, width: 64, value: BigInt.asUintN(64, res.window!.base - view.base) },
    { offset: Q.MEM_BASE, width: 32, value: res.devmem?.offset ?? 0n },
    { offset: Q.MEM_SIZE, width: 32, value: res.devmem?.size ?? 0n },
    { offset: Q.VECTOR, width: 32, value: BigInt(res.vectors[0]!) },
  ];
  // In one sendmsg (batchCommands): one wake-up of the device for them all.
  const writes = batchCommands(d, () => {
    const w = shadow
      .needed(q, want)
      .map((w) =>
        w.width === 64
          ? d.write64(BAR0, qcfg(q, w.offset), w.value)
          : d.write32(BAR0, qcfg(q, w.offset), Number(w.value)),
      );
    w.push(d.write32(BAR0, qcfg(q, Q.CTRL), Q_CTRL.ENABLE));
    return w;
  });
  const results = await Promise.allSettled(writes);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    shadow.forget(q);
    await d.write32(BAR0, qcfg(q, Q.CTRL), 0).catch(() => undefined);
    throw failed.reason;
  }
  shadow.record(q, want);
}
