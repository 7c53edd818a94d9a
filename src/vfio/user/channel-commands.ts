// The server-to-client commands (DMA_READ/DMA_WRITE) a RequestChannel (channel.ts) receives: each goes to the
// client's handler, one at a time in arrival order, and is answered (an error reply when the handler throws);
// without a handler they are declined ENOTSUP.
//
// What a server can make the client hold is bounded, as the server bounds its own replies
// (connection-replies.ts): the next command is served only once no more than COMMAND_REPLY_HIGH_WATER reply
// bytes wait for the server to read them, and a server with more than MAX_COMMANDS_WAITING commands unanswered
// is cut off (EPROTO). Unbounded, a server sending 64 KiB DMA_READs and reading nothing made the client queue
// every reply. Reading is not paused for it, as the server's is: the replies to the client's own calls, which
// the server may be blocked writing, must still be read.
import { ERRNO, ProtocolError, vfioUserError } from '../../errors.js';
import { encodeErrorReply, encodeReply, type VfioUserMessage, wantsReply } from './codec.js';
import * as P from './protocol.js';
import type { MessageSocket } from './transport.js';

/**
 * Serves one server-to-client command: resolves with the reply payload, or throws an error whose `errno`
 * (EIO if none) goes back in a header-only error reply. `receivedAt`: when it was read (performance.now()),
 * for a handler whose deadline counts from then, not from its turn (a broker relaying it: lease-dma-relay.ts).
 */
export type CommandHandler = (msg: VfioUserMessage, receivedAt: number) => Promise<Uint8Array> | Uint8Array;

/** Reply bytes that may wait for the server to read them before the next command is served (the server's too). */
export const COMMAND_REPLY_HIGH_WATER = 1 << 20;

/**
 * Commands received and not yet answered: one more closes the connection if the server is not reading our
 * replies (they pass the high-water mark), and is refused EBUSY at once if it is — then the waiting is ours (a
 * handler that relays each command, and waits on someone else). A stock server (libvfio-user's
 * vfu_sgl_read/write) waits for each reply before its next command. With the high-water mark: at most 1 MiB
 * and one reply queued, and 32 commands held.
 */
export const MAX_COMMANDS_WAITING = 32;

/**
 * Commands refused EBUSY while none was served meanwhile: one more closes the connection. A server that keeps
 * sending while its commands wait is not waiting for the replies it gets; each refusal is a 16-byte reply
 * that may sit unread (at most 16 KiB of them here).
 */
export const MAX_BUSY_REFUSALS = 1024;

/** What the commands need of their channel. */
export interface CommandHooks {
  closed(): boolean;
  /** Something escaped the serving (a bug): end the channel with it. */
  fail(err: Error): void;
  /** Sending a reply failed: the connection is gone. */
  shutdown(err: Error): void;
  /** A command was refused (its errno went back in the reply): for diagnostics. */
  refused(err: unknown, msg: VfioUserMessage): void;
}

export class ServerCommands {
  readonly #socket: MessageSocket;
  readonly #serve: CommandHandler | null;
  readonly #hooks: CommandHooks;
  /** Each command waits for the one before. */
  #serving: Promise<void> = Promise.resolve();
  /** Received and not answered yet (MAX_COMMANDS_WAITING). */
  #waiting = 0;
  /** EBUSY replies since a command was last served (MAX_BUSY_REFUSALS). */
  #busyRefusals = 0;
  /** The command being served waits for the server to read the replies before it ('drain'), or for the close. */
  #drainWaiter: (() => void) | null = null;

  constructor(socket: MessageSocket, serve: CommandHandler | null, hooks: CommandHooks) {
    this.#socket = socket;
    this.#serve = serve;
    this.#hooks = hooks;
  }

  /**
   * A command arrived (its `fdCount` fds already closed; `fdsLost`: it came with fds this process could not
   * take): queued, or ProtocolError past the bound.
   */
  receive(msg: VfioUserMessage, fdCount: number, fdsLost = false): void {
    const receivedAt = performance.now();
    if (this.#waiting >= MAX_COMMANDS_WAITING) {
      if (this.#drainWaiter !== null || this.#socket.queuedBytes > COMMAND_REPLY_HIGH_WATER) {
        throw new ProtocolError(
          `server sent ${this.#waiting + 1} commands without reading the replies to them (at most ${MAX_COMMANDS_WAITING} may wait)`,
        );
      }
      if (++this.#busyRefusals > MAX_BUSY_REFUSALS) {
        throw new ProtocolError(
          `server sent ${MAX_BUSY_REFUSALS + 1} commands refused EBUSY while ${MAX_COMMANDS_WAITING} waited (it does not wait for its replies)`,
        );
      }
      // The server reads our replies; we are the slow side: this one is refused now, not queued.
      const err = vfioUserError(
        'EBUSY',
        `${MAX_COMMANDS_WAITING} commands of the server are already waiting`,
      );
      this.#hooks.refused(err, msg);
      if (wantsReply(msg)) this.#send(encodeErrorReply(msg.msgId, msg.command, ERRNO.EBUSY));
      return;
    }
    this.#waiting++;
    const copy = { ...msg, payload: msg.payload.slice() };
    // #answer answers every failure of the handler; anything that escapes it is a bug, which ends the channel
    // rather than stall every later command behind a rejection (and go unhandled).
    const fds = fdsLost ? 'fds (not received)' : fdCount ? `${fdCount} fd(s)` : null;
    this.#serving = this.#serving
      .then(() => this.#next(copy, fds, receivedAt))
      .catch((e) => {
        this.#hooks.fail(e as Error);
      });
  }

  /** The socket drained, or the channel closed: the command waiting for it goes on. */
  drained(): void {
    const wake = this.#drainWaiter;
    this.#drainWaiter = null;
    wake?.();
  }

  /** `fds`: what came with the command besides bytes, in words (null: nothing), which refuses it. */
  async #next(msg: VfioUserMessage, fds: string | null, receivedAt: number): Promise<void> {
    try {
      // The replies before this one wait for the server to read them: serve no more until it has.
      if (this.#socket.queuedBytes > COMMAND_REPLY_HIGH_WATER && !this.#hooks.closed()) {
        await new Promise<void>((resolve) => (this.#drainWaiter = resolve));
      }
      await this.#answer(msg, fds, receivedAt);
    } finally {
      this.#waiting--;
      this.#busyRefusals = 0;
    }
  }

  /** Commands received and not answered yet (a broker's upgrade waits for none: handover/collect.ts). */
  get waiting(): number {
    return this.#waiting;
  }

  #send(reply: Uint8Array): void {
    if (this.#hooks.closed()) return;
    try {
      this.#socket.send(reply);
    } catch (err) {
      this.#hooks.shutdown(err as Error);
    }
  }

  async #answer(msg: VfioUserMessage, fds: string | null, receivedAt: number): Promise<void> {
    if (this.#hooks.closed()) return;
    let reply: Uint8Array;
    try {
      const name = P.commandName(msg.command);
      if (!this.#serve)
        throw vfioUserError('ENOTSUP', `${name}: this client serves no server-to-client commands`);
      if (fds) throw vfioUserError('EINVAL', `${name} carried ${fds}; it takes none`);
      const payload = await this.#serve(msg, receivedAt);
      reply = encodeReply(msg.msgId, msg.command, payload);
    } catch (err) {
      reply = encodeErrorReply(msg.msgId, msg.command, replyErrno(err));
      this.#hooks.refused(err, msg);
    }
    if (wantsReply(msg)) this.#send(reply);
  }
}

/**
 * The errno an error reply carries for a handler's failure: a VfioError's; a Node system error's, which libuv
 * gives negated (fs errors from an embedder's DMA memory); EIO for anything else. The header's field is a u32.
 */
function replyErrno(err: unknown): number {
  const e = (err as { errno?: unknown } | null)?.errno;
  if (typeof e !== 'number' || !Number.isInteger(e) || e === 0) return ERRNO.EIO;
  const n = Math.abs(e);
  return n < 4096 ? n : ERRNO.EIO;
}
