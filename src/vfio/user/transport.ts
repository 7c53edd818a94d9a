// What the vfio-user client and server need from a connected socket: the
// shape of src/sys's SeqpacketSocket (one record per message, fds with
// SCM_RIGHTS). Declared structurally so both sides can run over any such
// socket, a socketpair included.
import type { Fd } from '../../sys/fd.js';
import type { PeerCred } from '../../sys/native.js';

export interface ReceivedRecord {
  data: Buffer;
  /** Received fds: the receiver owns them. */
  fds: Fd[];
  /** MSG_TRUNC: the record was longer than the receive buffer. */
  truncated: boolean;
  /** MSG_CTRUNC: more fds were sent than fit. */
  ctruncated: boolean;
}

export interface MessageSocket {
  /** Send one record; the caller keeps its fds (the kernel duplicates them into the peer). */
  send(data: Uint8Array, fds?: (Fd | number)[]): unknown;
  on(event: 'message', listener: (m: ReceivedRecord) => void): unknown;
  on(event: 'close', listener: (...args: unknown[]) => void): unknown;
  /** Socket failures other than hang-up; 'close' follows. */
  on(event: 'error', listener: (err: Error) => void): unknown;
  close(): void;
  peerCred(): PeerCred;
}
