// A lease vector backed by the device's INTx line where the device masks the line at each interrupt
// (VFIO_IRQ_INFO_AUTOMASKED: vfio-pci) and unmasks it only when told. The lease shows the line as its
// MSI-X vector 0, an edge no client acknowledges, so wired straight to the client's eventfd it delivered one
// interrupt and then none, for good.
//
// So the broker stands on this one interrupt's path, as QEMU does for INTx without KVM: the device signals an
// eventfd of the broker's, which marks the line pending and signals the client's; the client's next BAR access
// through the broker (a device with INTx on a kernel backend is reached only that way: its slices are
// cooperative) is taken as servicing it, and the line is unmasked after that access. A line still asserted
// (the access did not acknowledge the device) is signalled again at once by the kernel: one more interrupt
// for the client, one per access, never a storm.

import type { Device } from '../device/device.js';
import { EventFd } from '../sys/eventfd.js';
import type { Fd } from '../sys/fd.js';
import { native } from '../sys/native.js';

/** A device whose INTx automasks (Device.irqAutomasked): it has unmaskIrq. */
export type IntxDevice = Pick<Required<Device>, 'setIrqs' | 'unmaskIrq'>;

export class IntxRelay {
  readonly #trigger: EventFd;
  #pending = false;
  #closed = false;

  /**
   * Relay the device's INTx (irq `index`, vector 0) to `client` (an eventfd, owned from here on, closed on
   * failure). Wires the broker's eventfd to the device, then unmasks the line: vfio-pci keeps a line masked
   * across a new trigger (and a reset), so one that fired for a previous relay and was never serviced (its lease
   * ended, or its client wired the vector again) would stay masked for this one. An unmask of a line still
   * asserted signals the new eventfd at once, as it should: the device still wants service.
   */
  static async wire(
    device: IntxDevice,
    index: number,
    client: Fd,
    log: (msg: string) => void,
  ): Promise<IntxRelay> {
    let relay: IntxRelay;
    try {
      relay = new IntxRelay(device, index, client, log);
    } catch (err) {
      client.close(); // the broker's eventfd was refused (EMFILE)
      throw err;
    }
    try {
      await device.setIrqs(index, 0, [relay.#trigger.fd]);
      await device.unmaskIrq(index, 0);
    } catch (err) {
      relay.close();
      throw err;
    }
    return relay;
  }

  private constructor(
    private readonly device: IntxDevice,
    private readonly index: number,
    private readonly client: Fd,
    private readonly log: (msg: string) => void,
  ) {
    this.#trigger = new EventFd();
    this.#trigger.onReadable(() => {
      if (this.#closed) return;
      this.#pending = true;
      try {
        native.eventfdWrite(this.client.fd, 1n);
      } catch (err) {
        // A full counter (the client never reads): it has an interrupt to see already.
        if ((err as { code?: string }).code !== 'EAGAIN') this.log(`INTx relay: ${(err as Error).message}`);
      }
    });
  }

  /** The client accessed the device (a BAR read or write through the broker): unmask a line that fired. */
  serviced(): void {
    if (!this.#pending || this.#closed) return;
    this.#pending = false;
    this.device.unmaskIrq(this.index, 0).catch((err: Error) => this.log(`INTx unmask: ${err.message}`));
  }

  /** Stop relaying (the caller unwires the device's INTx first) and close both eventfds. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#trigger.close();
    this.client.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
