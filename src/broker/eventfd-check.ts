// The broker writes to eventfds clients give it (ERR/REQ notices) and hands
// others to the device (MSI-X). A client could pass anything instead — a
// pipe, or an eventfd whose counter it filled — and a blocking write would
// then stall the broker or the device. So every such fd must be an eventfd,
// and its description is made non-blocking (a full counter already means
// "notified").

import { readlinkSync } from 'node:fs';
import { VfioError } from '../errors.js';
import type { Fd } from '../sys/fd.js';
import { native } from '../sys/native.js';

export function adoptEventFd(fd: Fd): void {
  let target: string;
  try {
    target = readlinkSync(`/proc/self/fd/${fd.fd}`);
  } catch {
    throw new VfioError('EBADF', 'the interrupt fd cannot be inspected');
  }
  if (target !== 'anon_inode:[eventfd]') {
    throw new VfioError('EINVAL', `interrupt fds must be eventfds, got ${target.replace(/:\[\d+\]$/, '')}`);
  }
  native.setNonBlocking(fd.fd, true);
}
