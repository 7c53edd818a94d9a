// BAR0 on the simulator's front end (main thread): the owner's register reads answered from the shared
// register file, and its writes applied here word by word, with no round trip to the device worker for a
// word that only stores a value. A word the device itself must act on (CONTROL, FW_CMD, a Q_CTRL disable or
// reset) is handed back to DeviceWorker as a request, which has it answered before the rest of the write goes
// on; a queue enabled here is only told to the device (a one-way post). It stands alone, as slice-access.ts
// does for BAR2/BAR4, so that DeviceWorker only routes each region and waits for the device, and what the
// register rules (model/bar0.ts) make of an owner's BAR0 access on this thread reads in one place.

import { native } from '../../sys/index.js';
import { VFIO_PCI_BAR0_REGION_INDEX } from '../../vfio/uapi/vfio.js';
import {
  bar0Read32,
  bar0WriteDirect,
  bar0WriteMayReachDevice,
  QCTRL_DEVICE,
  queueControlDirect,
} from '../model/bar0.js';
import { Q_NOTIFY_KICK_NEEDED, QP_Q_NOTIFY } from '../model/datasheet.js';
import { sliceFdIndex } from '../model/memfd-backing.js';
import type { Sa1Options } from '../model/options.js';
import { type RegisterFile, sharedClock } from '../model/register-file.js';
import type { DeviceRequest } from './commands.js';
import type { MailboxCaller } from './mailbox.js';

/** Q_NOTIFY with KICK_NEEDED, as stored little-endian in a queue page. */
const KICK_NEEDED_WORD = new Uint8Array(new Uint32Array([Q_NOTIFY_KICK_NEEDED]).buffer);

/** The owner's BAR0 accesses, served on the front end (the caller has checked the region access). */
export class Bar0Access {
  /**
   * `sliceFds`: the slices' current memfd numbers (memfd-backing.ts); `kicksOut`: whether the kick fds were
   * handed out (DeviceWorker.kicksHandedOut).
   */
  constructor(
    private readonly options: Sa1Options,
    private readonly regs: RegisterFile,
    private readonly mailbox: MailboxCaller<DeviceRequest>,
    private readonly sliceFds: Int32Array,
    private readonly kicksOut: () => boolean,
  ) {}

  read(offset: number, count: number): Uint8Array {
    // Byte stores, not a DataView: taking `out.buffer` would move the 4 or 8 bytes off the V8 heap, an
    // allocation per register read the collector then has to track (issue 16).
    const out = new Uint8Array(count);
    const now = sharedClock();
    for (let i = 0; i < count; i += 4) {
      const v = bar0Read32(this.regs, offset + i, this.options.numQueues, now);
      out[i] = v;
      out[i + 1] = v >>> 8;
      out[i + 2] = v >>> 16;
      out[i + 3] = v >>> 24;
    }
    return out;
  }

  /** The write applied here; yields each word the device must act on, in order, when the write comes to it. */
  *write(offset: number, data: Uint8Array): Generator<DeviceRequest, void> {
    // Word by word, low half first: each word the device must act on goes to it, in order. Room first for a
    // post per such word (only those: a SCRATCH or Q_* config write never waits on the worker): a full ring
    // fails the write here, before any register changed.
    let posts = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (bar0WriteMayReachDevice(offset + i, this.options.numQueues)) posts++;
    }
    if (posts) this.mailbox.makeRoom(posts);
    const dv = new DataView(data.buffer, data.byteOffset, data.length);
    for (let i = 0; i < data.length; i += 4) {
      const value = dv.getUint32(i, true);
      if (bar0WriteDirect(this.regs, offset + i, value, this.options.numQueues)) continue;
      const queue = queueControlDirect(this.regs, offset + i, value, this.options.numQueues);
      if (queue >= 0) {
        // Enabled here; the device latches its copy of the windows before its next round (a doorbell rung
        // after this reply is seen in that round or a later one).
        this.#queueEnabled(queue);
      } else if (queue === QCTRL_DEVICE) {
        yield {
          op: 'regionWrite',
          index: VFIO_PCI_BAR0_REGION_INDEX,
          offset: offset + i,
          data: data.slice(i, i + 4),
        };
      }
    }
  }

  /**
   * Tell the device that queue `q` was enabled. A device asleep on its fds (the kick fds are out and some
   * queue is armed) is left asleep: waking it would cost it a round and a walk over every queue to arm them
   * again, on every grant (with a thousand leases held, a thousand queues). So the new queue's page says
   * KICK_NEEDED (§2.3, rev 2) before the post, and its holder's first doorbell kicks the device awake, which
   * takes the post before that round; a holder that never kicks is served at the armed poll interval, as
   * it would be anyway. A device awake, or asleep for want of enabled queues (no kick ends that sleep), is
   * woken as before.
   */
  #queueEnabled(q: number): void {
    if (this.kicksOut()) {
      const fd = Atomics.load(this.sliceFds, sliceFdIndex(this.options, { kind: 'queue', index: q }));
      if (fd >= 0) native.pwrite(fd, KICK_NEEDED_WORD, QP_Q_NOTIFY);
    }
    this.mailbox.postLeavingFdSleep({ op: 'queueEnabled', queue: q });
  }
}
