// A booted simulator with queue 0 configured through its mapped slice page, and the client side of the
// doorbell protocol (datasheet §2.3 rev 2) as Sa1Queue does it: store SQ_TAIL, then kick only if
// Q_NOTIFY.KICK_NEEDED is set. For the doorbell tests.
import * as ds from '../../../src/sim/model/datasheet.js';
import { encodeDmaBufRequest } from '../../../src/sim/model/slices.js';
import { type Fd, Mapping, native } from '../../../src/sys/index.js';
import {
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_PCI_BAR2_REGION_INDEX,
} from '../../../src/vfio/uapi/vfio.js';
import type { VfioUserClientOptions } from '../../../src/vfio/user/client.js';
import { boot, TestQueue } from './driver.js';
import { type HostRegion, type Rig, rig, until } from './real.js';

const STRIDE = 65536;
const FW = 0x10_0000n;
const HOST = 0x20_0000n;
/** Host memory per queue (its window: both rings and NOPs). */
const QUEUE_MEM = 0x1000;

/** Queue `q` of the rig's device as a holder sees it: its slice page mapped, a TestQueue over it. */
async function holderQueue(r: Rig, host: HostRegion, q: number) {
  const reply = await r.client.feature({
    flags: VFIO_DEVICE_FEATURE_GET,
    feature: VFIO_DEVICE_FEATURE_DMA_BUF,
    data: encodeDmaBufRequest(VFIO_PCI_BAR2_REGION_INDEX, [
      { offset: BigInt(q * STRIDE), length: BigInt(STRIDE) },
    ]),
  });
  const pageFd = reply.fds[0]!;
  const page = Mapping.map(pageFd, { length: STRIDE });
  const words = new Int32Array(page.buffer, 0, ds.QP_REGISTERS_END / 4);
  const at = q * QUEUE_MEM;
  const tq = new TestQueue(
    r.bus,
    {
      q,
      mem: { iova: HOST + BigInt(at), view: host.view.subarray(at, at + QUEUE_MEM) },
      sqSize: 16,
      cqSize: 16,
      page: page.u8,
    },
    STRIDE,
  );
  const kickNeeded = (): boolean => (Atomics.load(words, ds.QP_Q_NOTIFY / 4) & ds.Q_NOTIFY_KICK_NEEDED) !== 0;
  /** Write one NOP, store SQ_TAIL (Atomics: a full fence), then kick only if the device asks for it. */
  const nop = (tag: bigint, kickFd: Fd | null): boolean => {
    void tq.submit([{ opcode: ds.OP_NOP, tag }], false);
    Atomics.store(words, ds.QP_SQ_TAIL / 4, tq.tail);
    const kick = kickFd !== null && kickNeeded();
    if (kick) native.eventfdWrite(kickFd.fd, 1);
    return kick;
  };
  const unmap = (): void => {
    page.unmap();
    pageFd.close();
  };
  return { tq, words, kickNeeded, nop, unmap };
}

/** A booted rig with queue 0 configured through its mapped slice page; queue(q) maps another one. */
export async function queueRig(
  idlePollUs: number,
  clientOpts: VfioUserClientOptions = {},
  simOpts: { armedPollUs?: number } = {},
) {
  const r: Rig = await rig({ numQueues: 4, idlePollUs, ...simOpts }, clientOpts);
  const fw = await r.map(FW, 64 * 1024);
  await boot(r.bus, fw);
  const host = await r.map(HOST, 1 << 20);
  const q0 = await holderQueue(r, host, 0);
  const others: { unmap(): void }[] = [];
  const queue = async (q: number) => {
    const h = await holderQueue(r, host, q);
    others.push(h);
    return h;
  };
  /**
   * Wait until `kickNeeded` was set by the device's own arming, as it goes to sleep on its kick fds: for a test
   * whose next step (an enable, a doorbell) must find it asleep. A look at KICK_NEEDED alone does not prove it:
   * for a queue enabled once kick fds are out, the front end stores the flag in the queue's page before the
   * device takes the enable's post (host/bar0-access.ts #queueEnabled), and a device woken by that post
   * clears it (host/worker.ts, 'queueEnabled') and only then arms. A stats command is the barrier: the device
   * takes every earlier post before it answers it. It leaves the device awake; the look after it finds the flag
   * once the device has armed again, asleep or microseconds from it (it stores KICK_NEEDED just before it
   * enters its wait). From then on only a command, a kick or the armed poll (1 s in the tests using this) wakes it.
   */
  const untilAsleepArmed = async (kickNeeded: () => boolean, what: string): Promise<void> => {
    await r.sim.stats();
    await until(kickNeeded, what, 5000);
  };
  const close = async (): Promise<void> => {
    for (const h of [q0, ...others]) h.unmap();
    await r.close();
  };
  return {
    r,
    tq: q0.tq,
    words: q0.words,
    kickNeeded: q0.kickNeeded,
    nop: q0.nop,
    queue,
    untilAsleepArmed,
    close,
  };
}
