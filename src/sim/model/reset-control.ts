// CONTROL and Q_CTRL as the owner writes them (datasheet §2.1, §2.2, §9): RESET first, then ENABLE as written;
// and the stuck-reset injection, which lets a reset begin but holds it unfinished (RESET reads 1) until the
// injection ends (docs/SA-1.md, "Stuck reset"). The whole-device reset itself touches every part of the device,
// so it stays in device.ts; this file decides when it runs. Resets the device does itself (owner disconnect,
// slice revoke) call resetQueue() directly: they are never held.

import {
  CONTROL_ENABLE,
  CONTROL_RESET,
  Q_CTRL,
  Q_CTRL_ENABLE,
  Q_CTRL_RESET,
  REG_CONTROL,
} from './datasheet.js';
import type { Engine } from './engine.js';
import type { Injections } from './injections.js';
import type { Queue } from './queue.js';
import type { RegisterFile } from './register-file.js';

export class ResetControl {
  /** Queue resets begun but held by a stuck-reset injection (Q_CTRL.RESET reads 1 until it is cleared). */
  readonly queueResetsPending = new Set<number>();

  /** `resetDevice`: the whole-device reset (Sa1Device.reset), run when a CONTROL.RESET finishes. */
  constructor(
    private readonly regs: RegisterFile,
    private readonly inject: Injections,
    private readonly engine: Engine,
    private readonly queues: readonly Queue[],
    private readonly resetDevice: () => void,
  ) {}

  get controlEnable(): boolean {
    return (this.regs.load(REG_CONTROL) & CONTROL_ENABLE) !== 0;
  }
  set controlEnable(v: boolean) {
    this.regs.store(REG_CONTROL, (v ? CONTROL_ENABLE : 0) | (this.deviceResetPending ? CONTROL_RESET : 0));
  }
  /** A CONTROL.RESET held by a stuck-reset injection: CONTROL.RESET reads 1 and STATUS shows RESETTING. */
  get deviceResetPending(): boolean {
    return (this.regs.load(REG_CONTROL) & CONTROL_RESET) !== 0;
  }
  set deviceResetPending(v: boolean) {
    this.regs.store(REG_CONTROL, (this.controlEnable ? CONTROL_ENABLE : 0) | (v ? CONTROL_RESET : 0));
  }

  /** CONTROL write: RESET first (unless a stuck-reset injection holds it), then ENABLE as written. */
  writeControl(value: number): void {
    if (this.deviceResetPending) return; // resetting: CONTROL takes nothing until the reset ends
    if (value & CONTROL_RESET && this.inject.deviceResetStuck) {
      this.controlEnable = false;
      this.deviceResetPending = true;
      return;
    }
    if (value & CONTROL_RESET) this.resetDevice();
    this.controlEnable = (value & CONTROL_ENABLE) !== 0;
  }

  /** Q_CTRL write: RESET first (queue back to its reset state), then ENABLE as written. */
  writeQueueControl(q: Queue, value: number): void {
    if (this.queueResetsPending.has(q.index)) return; // in reset: the queue takes no control until it ends
    if (value & Q_CTRL_RESET && this.inject.resetStuck(q.index)) {
      // The reset begins (the queue stops) but does not finish: Q_CTRL.RESET reads 1 until the injection ends.
      if (q.enabled) this.engine.abort(q);
      q.enabled = false;
      this.regs.store(q.qcfgAt + Q_CTRL, Q_CTRL_RESET);
      this.queueResetsPending.add(q.index);
      return;
    }
    if (value & Q_CTRL_RESET) this.resetQueue(q);
    const enable = (value & Q_CTRL_ENABLE) !== 0;
    if (q.enabled && !enable) this.engine.abort(q);
    q.enabled = enable;
    q.publishInflight(q.inflight.length);
  }

  /** Queue reset: in-flight descriptors ABORTED, rings and indexes zeroed, ERROR cleared, windows kept. */
  resetQueue(q: Queue): void {
    this.engine.abort(q);
    q.clearRings();
  }

  /** A whole-device reset finishes every reset still held (a stuck-reset injection's). */
  finishAll(): void {
    this.deviceResetPending = false;
    this.queueResetsPending.clear();
  }

  /**
   * Stuck reset: Q_CTRL.RESET of `queue` (or, with no queue, CONTROL.RESET and every Q_CTRL.RESET) begins
   * but never finishes. `stuck` false ends the injection and finishes the resets it held.
   */
  setStuckReset(stuck: boolean, queue?: number): void {
    this.inject.setStuck(queue ?? 'device', stuck);
    if (stuck) return;
    if (this.deviceResetPending && !this.inject.deviceResetStuck) {
      this.deviceResetPending = false;
      this.resetDevice();
    }
    for (const i of [...this.queueResetsPending]) {
      if (this.inject.resetStuck(i)) continue;
      this.queueResetsPending.delete(i);
      const q = this.queues[i] as Queue;
      this.regs.store(q.qcfgAt + Q_CTRL, 0);
      this.resetQueue(q);
    }
  }
}
