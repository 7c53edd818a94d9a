// GET_REGION_IO_FDS for SA-1 (datasheet §2.3, "Doorbell notification", rev 2):
// region 2 (BAR2) has one ioeventfd per queue page, at the page's SQ_TAIL
// (offset q·QUEUE_STRIDE + 0x0C, size 4, no datamatch). Every other region
// has none. The worker owns the eventfds; each reply carries dups. The device
// sleeps until kicked only once a reply has carried them (`sent`): a
// head-only reply or an ENOSPC leaves it on its idle poll.

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
): RegionIoFds {
  if (index !== VFIO_PCI_BAR2_REGION_INDEX) return { subRegions: [], fds: [] };
  const fds: Fd[] = [];
  try {
    for (const fd of deviceFds()) fds.push(new Fd(native.dup(fd)));
  } catch (err) {
    for (const fd of fds) fd.close();
    throw err;
  }
  const subRegions = fds.map((_, q) => ({
    offset: BigInt(q * options.queueStride + QP_SQ_TAIL),
    size: 4n,
    fdIndex: q,
    type: VFIO_USER_IO_FD_TYPE_IOEVENTFD,
    flags: 0,
    datamatch: 0n,
  }));
  return { subRegions, fds, sent };
}
