// Programming one SA-1 queue through BAR0: its reset (Q_CTRL.RESET until it reads 0), the grant's
// configuration writes (the windows, Q_XLAT, device memory and vector, then ENABLE), and the wait for a
// quiesced queue to go IDLE. Each is a few register commands with a bound; the driver (driver.ts) keeps
// the state around them: which queues are clean, which are quarantined.

import type { Device } from '../../device/device.js';
import { BAR0, Q, Q_CTRL, Q_STATUS, qcfg } from '../../hw/sa1/regs.js';
import type { LeaseResources } from '../driver.js';
import { pollUntil } from '../poll.js';
import type { QcfgShadow, QcfgWrite } from './qcfg-shadow.js';

/** Q_CTRL.RESET, then its reads until RESET reads 0, bounded by `timeoutMs` (ETIMEDOUT past it). */
export async function resetQueueRegisters(d: Device, q: number, timeoutMs: number): Promise<void> {
  // The first read goes out with the write (in order on the wire): one round trip when the reset is quick.
  await Promise.all([
    d.write32(BAR0, qcfg(q, Q.CTRL), Q_CTRL.RESET),
    pollUntil({
      what: `sa1: queue ${q} reset (Q_CTRL.RESET)`,
      read: () => d.read32(BAR0, qcfg(q, Q.CTRL)),
      done: (v) => (v & Q_CTRL.RESET) === 0,
      timeoutMs,
    }),
  ]);
}

/** Read Q_STATUS until the queue reports IDLE, bounded by `timeoutMs`. */
export function waitQueueIdle(d: Device, q: number, timeoutMs: number): Promise<number> {
  return pollUntil({
    what: `sa1: queue ${q} quiesce (Q_STATUS.IDLE)`,
    read: () => d.read32(BAR0, qcfg(q, Q.STATUS)),
    done: (st) => (st & Q_STATUS.IDLE) !== 0,
    timeoutMs,
  });
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
  const writes = shadow
    .needed(q, want)
    .map((w) =>
      w.width === 64
        ? d.write64(BAR0, qcfg(q, w.offset), w.value)
        : d.write32(BAR0, qcfg(q, w.offset), Number(w.value)),
    );
  writes.push(d.write32(BAR0, qcfg(q, Q.CTRL), Q_CTRL.ENABLE));
  const results = await Promise.allSettled(writes);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    shadow.forget(q);
    await d.write32(BAR0, qcfg(q, Q.CTRL), 0).catch(() => undefined);
    throw failed.reason;
  }
  shadow.record(q, want);
}
