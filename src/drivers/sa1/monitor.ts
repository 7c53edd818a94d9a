// The SA-1 driver's watch on the device: the fault vector (the fault log
// drained and reported as 'fault' events), the ERR interrupt ('hang' or
// 'device-reset'), and the HEARTBEAT poll ('hang' when it stops,
// 'unresponsive' when a read goes unanswered). Events go to the driver's
// emitter, which the broker listens on.

import type { EventEmitter } from 'node:events';
import type { Device } from '../../device/device.js';
import { BAR0, FAULT_LOG_ENTRIES, FAULT_RECORD_SIZE, REG, STATUS, STATUS_NAME } from '../../hw/sa1/regs.js';
import type { Fd } from '../../sys/fd.js';
import { EventFd } from '../../sys/index.js';
import { VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX } from '../../vfio/uapi/vfio.js';
import type { DeviceFault, DriverConfig } from '../driver.js';

export class Sa1Monitor {
  #faultFd: EventFd | null = null;
  #errFd: EventFd | null = null;
  #faultsSeen = 0;
  #heartbeat: { timer: NodeJS.Timeout; last: number; stale: number } | null = null;
  #closed = false;

  constructor(
    private readonly dev: Device,
    private readonly cfg: DriverConfig,
    private readonly events: EventEmitter,
  ) {}

  /** Wire the fault vector (the last MSI-X vector, `faultVector`) and ERR to eventfds of our own. */
  async arm(faultVector: number): Promise<void> {
    this.#faultFd = new EventFd();
    this.#errFd = new EventFd();
    this.#watch();
    await this.dev.setIrqs(VFIO_PCI_MSIX_IRQ_INDEX, faultVector, [this.#faultFd.fd]);
    await this.dev.setIrqs(VFIO_PCI_ERR_IRQ_INDEX, 0, [this.#errFd.fd]);
  }

  #watch(): void {
    this.#faultFd?.onReadable(() => this.#scheduleDrain());
    this.#errFd?.onReadable(() => void this.#onErr().catch((err) => this.events.emit('error', err)));
  }

  // ---- broker upgrade (src/broker/handover): the driver's hold/unhold/handover/adopt ----

  /** Stop watching (heartbeat, fault and ERR eventfds) and let a drain in progress finish. */
  async hold(): Promise<void> {
    this.stopHeartbeat();
    this.#faultFd?.stopWatching();
    this.#errFd?.stopWatching();
    await this.#draining;
  }

  unhold(): void {
    this.#watch();
    this.startHeartbeat();
  }

  /** The fault and ERR eventfds, to hand over (null before arm()). */
  eventFds(): Fd[] | null {
    return this.#faultFd && this.#errFd ? [this.#faultFd.fd, this.#errFd.fd] : null;
  }

  get faultsSeen(): number {
    return this.#faultsSeen;
  }

  /** Take over the eventfds and the fault-log position an old broker handed over (unhold() starts watching). */
  adopt(faultFd: Fd, errFd: Fd, faultsSeen: number): void {
    this.#faultFd = EventFd.adopt(faultFd);
    this.#errFd = EventFd.adopt(errFd);
    this.#faultsSeen = faultsSeen;
  }

  /** Take the device's fault log as seen: records before now are not reported. */
  async skipFaults(ack = true): Promise<void> {
    this.#faultsSeen = await this.dev.read32(BAR0, REG.FAULT_HEAD);
    if (ack) await this.dev.write32(BAR0, REG.FAULT_ACK, this.#faultsSeen);
  }

  closeInterrupts(): void {
    this.#faultFd?.close();
    this.#errFd?.close();
    this.#faultFd = this.#errFd = null;
  }

  close(): void {
    this.#closed = true;
    this.stopHeartbeat();
    this.closeInterrupts();
  }

  /** ERR: the device hung, or was reset without the driver asking (its own resets raise none). */
  async #onErr(): Promise<void> {
    const status = await this.dev.read32(BAR0, REG.STATUS);
    if (status & STATUS.HUNG) this.events.emit('hang', 'the device raised ERR and reports HUNG');
    else this.events.emit('device-reset', 'the device raised ERR: it was reset');
  }

  /** One drain at a time (two would both start from #faultsSeen and report faults twice); rerun if more came. */
  #draining: Promise<void> | null = null;
  #drainAgain = false;
  #scheduleDrain(): void {
    if (this.#draining) {
      this.#drainAgain = true;
      return;
    }
    this.#draining = (async () => {
      do {
        this.#drainAgain = false;
        await this.#drainFaults().catch((err) => this.events.emit('error', err));
      } while (this.#drainAgain);
    })().finally(() => {
      this.#draining = null;
    });
  }

  async #drainFaults(): Promise<void> {
    const d = this.dev;
    const head = await d.read32(BAR0, REG.FAULT_HEAD);
    // The log holds the last 16 records; older ones are lost if we fell that far behind. Which queues they were
    // for is gone with them, so no lease hears of them (each such queue is in ERROR, which its holder sees):
    // they are counted for the operator.
    let behind = (head - this.#faultsSeen) >>> 0;
    // A head behind what was seen is a log that started again (a device reset clears it): count from 0.
    if (behind >= 2 ** 31) behind = head;
    const lost = Math.max(0, behind - FAULT_LOG_ENTRIES);
    if (lost) this.events.emit('faults-lost', lost);
    const from = (head - Math.min(behind, FAULT_LOG_ENTRIES)) >>> 0;
    for (let n = from; n !== head; n = (n + 1) >>> 0) {
      // BAR0 takes 4- or 8-byte accesses only: a record is two 64-bit reads.
      const at = REG.FAULT_LOG + (n % FAULT_LOG_ENTRIES) * FAULT_RECORD_SIZE;
      const head = await d.read64(BAR0, at);
      const address = await d.read64(BAR0, at + 8);
      const queue = Number(head & 0xffffn);
      const code = Number((head >> 16n) & 0xffffn);
      const fault: DeviceFault = {
        queue: queue === 0xffff ? null : queue,
        code,
        name: STATUS_NAME[code] ?? (code === 16 ? 'FW_FAULT' : code === 17 ? 'HANG' : `CODE_${code}`),
        address,
      };
      this.events.emit('fault', fault);
    }
    this.#faultsSeen = head;
    await d.write32(BAR0, REG.FAULT_ACK, head);
  }

  /**
   * Every period, read HEARTBEAT. It advances at least every 10 ms: two whole periods without a change is a
   * hang. A read that fails counts as a period without a change (a device that answers with errors is no
   * healthy device). A read still unanswered after sa1.response_timeout_ms is an unresponsive device (a
   * frozen server): reported at once, without waiting for the request's own 5 s deadline.
   */
  startHeartbeat(): void {
    const period = this.cfg.sa1.heartbeatMs;
    const limit = this.cfg.sa1.responseTimeoutMs;
    const hb = { timer: setInterval(() => void tick(), period), last: -1, stale: 0 };
    hb.timer.unref();
    this.#heartbeat = hb;
    let sentAt: number | null = null;
    const stop = (event: 'hang' | 'unresponsive', why: string) => {
      if (this.#heartbeat !== hb) return; // stopped meanwhile (recovery, close): not this tick's news
      this.stopHeartbeat();
      this.events.emit(event, why);
    };
    const tick = async () => {
      if (this.#closed || this.#heartbeat !== hb) return;
      if (sentAt !== null) {
        const waited = Date.now() - sentAt;
        if (waited >= limit)
          stop('unresponsive', `the device has not answered a HEARTBEAT read for ${waited} ms`);
        return;
      }
      sentAt = Date.now();
      try {
        const v = await this.dev.read32(BAR0, REG.HEARTBEAT);
        hb.stale = v === hb.last ? hb.stale + 1 : 0;
        hb.last = v;
        if (hb.stale >= 2) stop('hang', `heartbeat stopped at ${v}`);
      } catch (err) {
        // The connection is gone: the broker sees 'close' on the device and reconnects.
        if ((err as { code?: string }).code === 'ECONNRESET') return;
        hb.stale++;
        if (hb.stale >= 2) stop('hang', `heartbeat reads fail: ${(err as Error).message}`);
      } finally {
        sentAt = null;
      }
    };
  }

  stopHeartbeat(): void {
    if (this.#heartbeat) clearInterval(this.#heartbeat.timer);
    this.#heartbeat = null;
  }
}
