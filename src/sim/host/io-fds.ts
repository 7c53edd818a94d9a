// GET_REGION_IO_FDS for SA-1 (datasheet §2.3, "Doorbell notification", rev 2):
// region 2 (BAR2) has one ioeventfd per queue page, at the page's SQ_TAIL
// (offset q·QUEUE_STRIDE + 0x0C, size 4, no datamatch). Every other region
// has none. The worker owns the eventfds; each reply carries dups. The device
// sleeps until kicked only once a reply has carried them (`sent`): a
// head-only reply leaves it on its idle poll.
//
// A device with more queues than one message can carry fds (the kernel's 253, or the client's max_msg_fds if
// lower) shares them: queue q's sub-region names fd q mod K, K the fds sent (vfio-user.rst: "more than one
// sub-region may share the same file descriptor"). Any kick wakes the whole device (the worker sleeps on all of
// its fds at once and then polls every queue), so which fd a queue's holder writes does not matter to the device.
// Refusing such a client instead (ENOSPC, until issue 16's twenty-sixth pass) left every queue of the device to
// the idle poll: one idle lease on a 1,024-queue simulator then cost its worker a fifth of a core.

import { Fd, native } from '../../sys/index.js';
import { VFIO_PCI_BAR2_REGION_INDEX } from '../../vfio/uapi/vfio.js';
import { type RegionIoFds, VFIO_USER_IO_FD_TYPE_IOEVENTFD } from '../../vfio/user/region-io-fds.js';
import { QP_SQ_TAIL } from '../model/datasheet.js';
import type { Sa1Options } from '../model/options.js';

export function sa1RegionIoFds(
  options: Sa1Options,
  index: number,
  deviceFds: () => number[],
  sent: () => void,
  maxFds = Number.POSITIVE_INFINITY,
): RegionIoFds {
  if (index !== VFIO_PCI_BAR2_REGION_INDEX) return { subRegions: [], fds: [] };
  const own = deviceFds();
  // At least one: a client that takes none (max_msg_fds 0) is refused by the server, after its argsz check.
  const count = Math.max(1, Math.min(own.length, maxFds));
  const fds: Fd[] = [];
  try {
    for (let i = 0; i < count; i++) fds.push(new Fd(native.dup(own[i]!)));
  } catch (err) {
    for (const fd of fds) fd.close();
    throw err;
  }
  const subRegions = Array.from({ length: options.numQueues }, (_, q) => ({
    offset: BigInt(q * options.queueStride + QP_SQ_TAIL),
    size: 4n,
    fdIndex: q % count,
    type: VFIO_USER_IO_FD_TYPE_IOEVENTFD,
    flags: 0,
    datamatch: 0n,
  }));
  return { subRegions, fds, sent };
}
