// What this driver knows each queue's QCFG configuration registers to hold
// (Q_WIN_BASE, Q_WIN_SIZE, Q_XLAT, Q_MEM_BASE, Q_MEM_SIZE, Q_VECTOR), so that
// a grant writes only the registers whose value changes, then Q_CTRL.ENABLE.
//
// Why this holds: a queue reset keeps the windows, Q_XLAT and Q_VECTOR
// (datasheet rev 2 §2.2 and §9; docs/SA-1.md "Queue reset / enable"), the
// broker is the device's only owner (nobody else writes BAR0), and a grant
// writes them only to a disabled queue, where they take effect. A queue on
// the same IOVA window with no device memory is granted again with one write
// (ENABLE) instead of seven: each register write is a device command the
// device serves one after another. What is known is forgotten whenever it
// may no longer hold: a whole-device reset (boot, recovery: QCFG back to its
// power-on values), a lost device connection (a new device server), a grant
// whose writes failed part-way, and a broker upgrade (the new driver starts
// knowing nothing, and writes everything on each queue's first grant).

/** One configuration register: its offset in QCFG[q], width and value. */
export interface QcfgWrite {
  offset: number;
  width: 32 | 64;
  value: bigint;
}

export class QcfgShadow {
  readonly #known = new Map<number, Map<number, bigint>>();

  /** The writes of `want` whose value queue `q` is not known to hold already. */
  needed(q: number, want: readonly QcfgWrite[]): QcfgWrite[] {
    const known = this.#known.get(q);
    if (!known) return [...want];
    return want.filter((w) => known.get(w.offset) !== w.value);
  }

  /** Every write of `want` reached queue `q` (or it held the value already). */
  record(q: number, want: readonly QcfgWrite[]): void {
    const known = this.#known.get(q) ?? new Map<number, bigint>();
    for (const w of want) known.set(w.offset, w.value);
    this.#known.set(q, known);
  }

  /** Queue `q`'s registers are unknown again (a write to it failed). */
  forget(q: number): void {
    this.#known.delete(q);
  }

  /** Every queue's registers are unknown again (device reset, lost device, new driver). */
  clear(): void {
    this.#known.clear();
  }
}
