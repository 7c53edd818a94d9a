// The vfio-user wire: AF_UNIX SOCK_STREAM, as QEMU's vfio-user-pci and
// libvfio-user connect and listen. Messages are framed by the header's
// msg_size (vfio-user.rst, "Header"); fds ride with a message's first bytes.
// The client and server run over any MessageSocket (a socketpair included),
// one record per vfio-user message.
import type { Fd } from '../../sys/fd.js';
import type { PeerCred } from '../../sys/native.js';
import { type StreamFraming, StreamSocket } from '../../sys/stream-socket.js';

export interface ReceivedRecord {
  data: Buffer;
  /** Received fds: the receiver owns them. */
  fds: Fd[];
  /** The record was longer than the receive buffer (never on the stream transport, which cuts the peer off). */
  truncated: boolean;
  /** More fds were sent than fit. */
  ctruncated: boolean;
  /**
   * The record came with fds this process could not take (StreamMessage.fdsLost: EMFILE, its fd table full;
   * EACCES, a security module refused them): `fds` is empty, the record whole, the connection sound. That
   * record's request (or reply) fails; the peer did nothing wrong. Absent or null: its fds came.
   */
  fdsLost?: Error | null;
}

export interface MessageSocket {
  /** Send one record; the caller keeps its fds (the kernel duplicates them into the peer). */
  send(data: Uint8Array, fds?: (Fd | number)[]): unknown;
  on(event: 'message', listener: (m: ReceivedRecord) => void): unknown;
  on(event: 'close', listener: (...args: unknown[]) => void): unknown;
  /** Socket failures other than hang-up, protocol violations of the framing included; 'close' follows. */
  on(event: 'error', listener: (err: Error) => void): unknown;
  /** Flow control: 'drain' when the bytes the kernel had not taken (queuedBytes) are sent. */
  on(event: 'drain', listener: () => void): unknown;
  close(): void;
  peerCred(): PeerCred;
  /** Flow control: bytes sent but not yet taken by the kernel. */
  readonly queuedBytes: number;
  /** Flow control: descriptors held to go with those bytes (absent: none are ever held). */
  readonly queuedFds?: number;
  /** Stop / restart reading messages (the peer's wait in the kernel). */
  pause(): void;
  resume(): void;
}

/** vfio_user_header: msg_id u16, cmd u16, msg_size u32 (the whole message), flags u32, error_no u32. */
export const VFIO_USER_FRAMING: StreamFraming = {
  headerSize: 16,
  messageSize: (header) => header.readUInt32LE(4),
};

/** Default receive limit of a client: a reply carrying 1 MiB of data and its headers. */
export const DEFAULT_MAX_MESSAGE = 1024 * 1024 + 4096;

/** Connects to a vfio-user server's socket (SOCK_STREAM); throws ENOENT/ECONNREFUSED/EPROTOTYPE with `code`. */
export function connectVfioUser(path: string, maxMessage = DEFAULT_MAX_MESSAGE): StreamSocket {
  return StreamSocket.connect(path, { framing: VFIO_USER_FRAMING, maxMessage });
}

/** Two connected vfio-user stream sockets (tests, in-process peers). */
export function vfioUserPair(maxMessage = DEFAULT_MAX_MESSAGE): [StreamSocket, StreamSocket] {
  return StreamSocket.pair({ framing: VFIO_USER_FRAMING, maxMessage });
}
