// A client that sends fds to a vfio-user server with a message it never finishes: a VERSION header announcing
// 64 bytes and nothing after it. The server holds the fds with the partial message and closes them when the
// client hangs up, which is how the broker's tests make it close an fd of their choosing.
import { native } from '../../src/sys/index.js';

/** The header of a VERSION announcing 64 bytes (msg_id `msgId`), never followed by the rest. */
export function unfinishedVersion(msgId = 1): Buffer {
  const head = Buffer.alloc(16);
  head.writeUInt16LE(msgId, 0);
  head.writeUInt16LE(1, 2); // VFIO_USER_VERSION
  head.writeUInt32LE(64, 4); // msg_size
  return head;
}

/** Connect to `socket`, send an unfinished VERSION carrying `fds`, hang up: the server closes its copies. */
export function sendAndHangUp(socket: string, fds: number[]): void {
  const sock = native.unixConnect(socket, true);
  try {
    native.sendmsg(sock, unfinishedVersion(), fds);
  } finally {
    native.close(sock);
  }
}
