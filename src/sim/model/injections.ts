// The SA-1 model's fault injections (programmatic only, never through a BAR): what each one keeps until
// it fires or is cleared. The device (device.ts) asks here at the points each one acts: a descriptor's
// delay at fetch, an interrupt's drop at delivery, the error lag at an error, a hang at a
// firmware load, a stuck reset at a reset. What an injection does to the device stays in the device.

/** Interrupt-drop injection: drop the next `count` interrupts matching index/vector (undefined = any). */
interface DropRule {
  count: number;
  index?: number;
  vector?: number;
}

export class Injections {
  #delayAllMs = 0;
  readonly #delayQueueMs = new Map<number, number>();
  readonly #drops: DropRule[] = [];
  /** inject errorLag: ms the next error waits between what it wrote and the state that shows it (0: none). */
  #errorLagMs = 0;
  /** Stuck-reset injection: queues whose Q_CTRL.RESET never finishes; 'device' also holds CONTROL.RESET. */
  readonly #stuckResets = new Set<number | 'device'>();
  #hangAtLoads = 0;

  /** Per-descriptor delay (ms) in force for queue `queue`. */
  delayMs(queue: number): number {
    return this.#delayQueueMs.get(queue) ?? this.#delayAllMs;
  }

  setDescriptorDelay(ms: number, queue?: number): void {
    if (queue === undefined) this.#delayAllMs = ms;
    else if (ms > 0) this.#delayQueueMs.set(queue, ms);
    else this.#delayQueueMs.delete(queue);
  }

  dropInterrupts(count: number, index?: number, vector?: number): void {
    this.#drops.push({ count, index, vector });
  }

  /** Whether this interrupt is to be dropped (a matching rule's count is taken). */
  takeDrop(index: number, vector: number): boolean {
    const rule = this.#drops.find(
      (r) =>
        r.count > 0 &&
        (r.index === undefined || r.index === index) &&
        (r.vector === undefined || r.vector === vector),
    );
    if (!rule) return false;
    rule.count--;
    return true;
  }

  /** The next error (a data fault, a firmware load error) shows its state `ms` after what it wrote (inject 'errorLag'). */
  setErrorLag(ms: number): void {
    this.#errorLagMs = ms;
  }

  /** The lag before the next error shows its state; taking it clears it. */
  takeErrorLag(): number {
    const ms = this.#errorLagMs;
    this.#errorLagMs = 0;
    return ms;
  }

  /** The next `count` firmware loads hang the device instead of running (0 clears). */
  hangOnFirmwareLoad(count: number): void {
    if (!Number.isInteger(count) || count < 0)
      throw new RangeError(`hang count must be an integer >= 0, got ${count}`);
    this.#hangAtLoads = count;
  }

  /** Whether this firmware load hangs (one of the counted loads is taken). */
  takeLoadHang(): boolean {
    if (this.#hangAtLoads === 0) return false;
    this.#hangAtLoads--;
    return true;
  }

  /** Hold (or stop holding) the resets of `key`: a queue's Q_CTRL.RESET, or 'device' for all of them. */
  setStuck(key: number | 'device', stuck: boolean): void {
    if (stuck) this.#stuckResets.add(key);
    else this.#stuckResets.delete(key);
  }

  /** CONTROL.RESET is held. */
  get deviceResetStuck(): boolean {
    return this.#stuckResets.has('device');
  }

  /** Queue `queue`'s Q_CTRL.RESET is held (by its own injection or the device-wide one). */
  resetStuck(queue: number): boolean {
    return this.#stuckResets.has(queue) || this.#stuckResets.has('device');
  }
}
