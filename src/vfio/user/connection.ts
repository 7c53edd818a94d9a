// One client connection of a VfioUserServer: framing checks on receipt,
// then the requests in arrival order through validate.ts into the device
// model, and the replies back in the same order. A request waits for the one
// ahead of it, except those a model may pipeline (DMA_MAP, SET_IRQS,
// GET_REGION_IO_FDS start once the request ahead has issued its device
// calls; at most MAX_IN_FLIGHT at once). What each request does once
// VERSION is done — its checks, the model's call, its reply — is dispatch.ts.
// A message that breaks framing closes this connection only.
import { ERRNO, ProtocolError, VfioError } from '../../errors.js';
import type { Fd } from '../../sys/fd.js';
import {
  decodeMessage,
  encodeErrorReply,
  encodeReply,
  isReply,
  type VfioUserMessage,
  wantsReply,
} from './codec.js';
import type { ConnectionInfo, Issued, VfioUserDeviceModel } from './device-model.js';
import { dispatchRequest } from './dispatch.js';
import { decodeVersion, encodeVersion } from './messages.js';
import * as P from './protocol.js';
import { closeAll, type Reply } from './request-replies.js';
import type { MessageSocket, ReceivedRecord } from './transport.js';
import * as V from './validate.js';
import { type Capabilities, readCapabilities, replyCapabilities } from './version.js';

export interface ConnectionConfig extends V.ServerLimits {
  maxDmaMaps: number;
  pgsizes: number;
  log(message: string, err?: unknown): void;
}

/** A negotiated session as one process hands it to another. */
export interface AdoptedSession {
  /** The client's VERSION capabilities object. */
  peerCapabilities: Record<string, unknown>;
  wantsReasons: boolean;
}

/**
 * Flow control, so that a client costs the server a bounded amount whatever
 * it does: reading stops while MAX_PENDING requests are queued or more than
 * REPLY_HIGH_WATER reply bytes wait for the client to read them, and resumes
 * when both are back under. Requests already read still get their replies,
 * so the backlog can pass the high-water mark by at most MAX_PENDING replies;
 * past REPLY_HARD_LIMIT (a client that never reads) the connection is cut.
 */
export const MAX_PENDING = 32;
export const REPLY_HIGH_WATER = 1 << 20;
export const REPLY_HARD_LIMIT = 8 << 20;

/**
 * Requests that may start before the one ahead of them is answered (see Issued in device-model.ts). A pipelined
 * request also waits until the request MAX_IN_FLIGHT before it is done in the model, so the model serves at
 * most MAX_IN_FLIGHT requests of a connection at once (replies waiting their turn are bounded by MAX_PENDING);
 * 8 lets the client library's whole acquire batch (regions, 4 SET_IRQS, io fds, the rings' DMA_MAP) through. Everything else — DMA_UNMAP above all, which must see every earlier map's
 * result — starts only once every earlier request is answered.
 */
const PIPELINED = new Set([
  P.VFIO_USER_DMA_MAP,
  P.VFIO_USER_DEVICE_SET_IRQS,
  P.VFIO_USER_DEVICE_GET_REGION_IO_FDS,
]);
export const MAX_IN_FLIGHT = 8;

export class VfioUserConnection {
  readonly info: ConnectionInfo;
  readonly socket: MessageSocket;
  /** The client's version capabilities, once negotiated. */
  peer: Capabilities | null = null;
  /** Resolves with the close reason once the model has been told (disconnected() returned). */
  readonly closed: Promise<string>;
  #config: ConnectionConfig;
  #model: VfioUserDeviceModel | null = null;
  #refusal: unknown = null;
  #queue: Promise<void>;
  #closing: string | null = null;
  #pending = 0;
  /** Resolves when the next pipelined request may start (the last request sent its device calls or ended). */
  #turn: Promise<void> = Promise.resolve();
  /** Whether each of the last MAX_IN_FLIGHT requests is done in the model: a pipelined one waits for the oldest. */
  readonly #recent: Promise<void>[] = [];
  /** The model's work after an early VERSION reply failed (versionSettled): the next request's answer. */
  #settleError: VfioError | null = null;
  #resolveClosed!: (reason: string) => void;
  /** The client proposed devlease "error_reason": error replies carry the reason (kept even if VERSION fails). */
  #wantsReasons = false;

  constructor(
    info: ConnectionInfo,
    socket: MessageSocket,
    config: ConnectionConfig,
    createDevice: (c: ConnectionInfo, s: MessageSocket) => VfioUserDeviceModel | Promise<VfioUserDeviceModel>,
    /** A session another process negotiated (a broker upgrade): VERSION is done, requests go to the model. */
    adopted?: AdoptedSession,
  ) {
    this.info = info;
    this.socket = socket;
    this.#config = config;
    this.closed = new Promise((r) => {
      this.#resolveClosed = r;
    });
    if (adopted) {
      this.peer = readCapabilities({ capabilities: adopted.peerCapabilities });
      this.#wantsReasons = adopted.wantsReasons;
    }
    // Creating the device is the first entry of the queue: requests wait for it.
    this.#queue = (async () => {
      try {
        this.#model = await createDevice(info, socket);
      } catch (err) {
        this.#refusal = err;
        if (!(err instanceof VfioError))
          config.log(`vfio-user connection ${info.id}: createDevice failed`, err);
      }
    })();
    socket.on('message', (m) => this.#receive(m));
    socket.on('drain', () => this.#flowControl());
    socket.on('close', () => this.close('peer hung up'));
    socket.on('error', (err) => {
      // The framing cut off a peer that broke it (a lying msg_size, stray fds): say so once.
      if ((err as { code?: string }).code === 'EPROTO') {
        config.log(`vfio-user connection ${info.id}: protocol error: ${err.message}`);
      }
      this.close(`socket error: ${err.message}`);
    });
  }

  get closing(): boolean {
    return this.#closing !== null;
  }

  /**
   * Stop reading requests, whatever flow control says, until unhold() (a broker upgrade's quiesce). Requests
   * already read are still served: idle() says when they all are.
   */
  hold(): void {
    this.#held = true;
    this.socket.pause();
  }

  unhold(): void {
    this.#held = false;
    this.#flowControl();
  }

  /** Resolves once every request read so far has been answered. */
  async idle(): Promise<void> {
    let q: Promise<void>;
    do {
      q = this.#queue;
      await q;
    } while (q !== this.#queue);
  }

  /** What another process needs to carry this session on (see the constructor's `adopted`). */
  handover(): AdoptedSession | null {
    if (this.peer === null) return null;
    return { peerCapabilities: this.peer.raw, wantsReasons: this.#wantsReasons };
  }

  #held = false;

  /** Close this connection (idempotent); the model's disconnected() runs after any request in progress. */
  close(reason = 'closed by server'): void {
    if (this.#closing !== null) return;
    this.#closing = reason;
    try {
      this.socket.close();
    } catch {
      // already closed
    }
    this.#queue = this.#queue.then(async () => {
      try {
        await this.#model?.disconnected(reason);
      } catch (err) {
        this.#config.log(`vfio-user connection ${this.info.id}: disconnected() threw`, err);
      }
      this.#resolveClosed(reason);
    });
  }

  #receive(rec: ReceivedRecord): void {
    const { fds } = rec;
    if (this.#closing !== null) {
      closeAll(fds);
      return;
    }
    let msg: VfioUserMessage;
    try {
      if (rec.truncated) throw new ProtocolError(`message larger than the receive buffer`);
      if (rec.ctruncated || fds.length > this.#config.maxMsgFds) {
        throw new ProtocolError(`message carries more than max_msg_fds (${this.#config.maxMsgFds}) fds`);
      }
      msg = decodeMessage(rec.data);
      // This server sends no commands, so no reply can be expected from the client.
      if (isReply(msg))
        throw new ProtocolError(`reply (msg_id ${msg.msgId}) to a command this server never sent`);
    } catch (err) {
      closeAll(fds);
      this.#config.log(`vfio-user connection ${this.info.id}: ${(err as Error).message}; closing it`);
      this.close(`protocol error: ${(err as Error).message}`);
      return;
    }
    this.#pending++;
    this.#flowControl();
    // Requests start in arrival order and their replies go back in that order. Most start once every earlier
    // one is answered; a pipelined one (PIPELINED) starts once the one before it has sent its device calls
    // (the model calls `issued`) or finished, and the one MAX_IN_FLIGHT before it is done in the model.
    const answered = this.#queue;
    const pipelined = PIPELINED.has(msg.command) && this.peer !== null;
    const depth = this.#recent.length >= MAX_IN_FLIGHT ? this.#recent[0] : undefined;
    const start = pipelined ? Promise.all([this.#turn, depth]) : answered;
    let release!: () => void;
    this.#turn = new Promise<void>((r) => {
      release = r;
    });
    let served!: () => void;
    const inModel = new Promise<void>((r) => {
      served = r;
    });
    const done = start.then(async () => {
      try {
        await this.#handle(msg, fds, { issued: pipelined ? release : undefined, served }, answered);
      } finally {
        release();
        served();
        this.#pending--;
        this.#flowControl();
      }
    });
    // The queue's tail is "every request so far answered" (idle() and close() rely on it).
    this.#queue = Promise.all([answered, done]).then(() => undefined);
    this.#recent.push(inModel);
    if (this.#recent.length > MAX_IN_FLIGHT) this.#recent.shift();
  }

  #flowControl(): void {
    if (this.#closing !== null) return;
    const backlog = this.socket.queuedBytes;
    if (backlog > REPLY_HARD_LIMIT) {
      this.#config.log(
        `vfio-user connection ${this.info.id}: ${backlog} reply bytes unread by the client; closing it`,
      );
      this.close('client does not read its replies');
      return;
    }
    const full = this.#held || this.#pending >= MAX_PENDING || backlog > REPLY_HIGH_WATER;
    if (full) this.socket.pause();
    else this.socket.resume();
  }

  /**
   * `issued`: given to a pipelined request's model call; `served`: the model is done with this request;
   * `answered`: every earlier request is answered (this one's reply goes after).
   */
  async #handle(
    msg: VfioUserMessage,
    fds: Fd[],
    { issued, served }: { issued: Issued | undefined; served: () => void },
    answered: Promise<void>,
  ) {
    if (this.#closing !== null) {
      closeAll(fds);
      return;
    }
    let reply: Reply;
    let taken = false;
    const take = (): Fd[] => {
      taken = true;
      return fds;
    };
    try {
      // The model's work after an early VERSION reply failed: this request is answered with that failure.
      if (this.#settleError !== null) throw this.#settleError;
      // Nothing but VERSION before VERSION; after it, the request itself (dispatch.ts).
      reply =
        this.peer === null
          ? await this.#beforeVersion(msg, fds)
          : await dispatchRequest(
              this.#model as VfioUserDeviceModel,
              this.#config,
              this.info.id,
              this.peer,
              msg,
              fds,
              take,
              issued,
            );
      // Done with the model: the next pipelined request need not wait for this one's turn to reply.
      issued?.();
      served();
    } catch (err) {
      issued?.();
      served();
      if (!taken) closeAll(fds);
      taken = true;
      let errno: number = ERRNO.EIO;
      const what = `vfio-user connection ${this.info.id}: ${P.commandName(msg.command)}`;
      if (err instanceof VfioError) errno = err.errno;
      else this.#config.log(`${what} failed`, err);
      await answered;
      if (wantsReply(msg)) this.#send(encodeErrorReply(msg.msgId, msg.command, errno, this.#reasonFor(err)));
      else if (err instanceof VfioError) this.#config.log(`${what} (no_reply) refused: ${err.message}`);
      // Nothing but a successful VERSION opens a session (vfio-user.rst, "Connection Initiation").
      if (this.peer === null) this.close(`${P.commandName(msg.command)} failed before version negotiation`);
      else if (this.#settleError !== null) this.close(`after VERSION: ${(err as Error).message}`);
      return;
    } finally {
      if (!taken) closeAll(fds);
    }
    try {
      await answered;
      if (wantsReply(msg)) this.#send(encodeReply(msg.msgId, msg.command, reply.payload), reply.fds);
    } finally {
      closeAll(reply.fds ?? []);
    }
    // An early VERSION reply: later requests wait (this entry of the queue) until the model has finished.
    if (msg.command === P.VFIO_USER_VERSION && this.peer !== null && this.#model?.versionSettled) {
      try {
        await this.#model.versionSettled();
      } catch (err) {
        this.#settleError =
          err instanceof VfioError ? err : new VfioError('EIO', `after VERSION: ${(err as Error).message}`);
      }
    }
  }

  /** The reason text for an error reply, if the client asked for reasons (devlease "error_reason"). */
  #reasonFor(err: unknown): string | undefined {
    if (!this.#wantsReasons) return undefined;
    if (!(err instanceof VfioError)) return 'internal error in the device (logged by the server)';
    return err.reason;
  }

  #send(data: Uint8Array, fds?: Fd[]): void {
    if (this.#closing !== null) return;
    try {
      this.socket.send(data, fds);
      this.#flowControl();
    } catch (err) {
      this.close(`send failed: ${(err as Error).message}`);
    }
  }

  /** The first request: VERSION, or a refusal (async as dispatchRequest, so both fail the same way). */
  async #beforeVersion(msg: VfioUserMessage, fds: Fd[]): Promise<Reply> {
    if (msg.command !== P.VFIO_USER_VERSION) {
      throw new VfioError('EINVAL', `${P.commandName(msg.command)} before VFIO_USER_VERSION`);
    }
    V.checkFdCount(msg.command, fds, this.#config);
    return this.#negotiate(msg.payload);
  }

  async #negotiate(payload: Uint8Array): Promise<Reply> {
    let v: ReturnType<typeof decodeVersion>;
    try {
      v = decodeVersion(payload);
      this.peer = readCapabilities(v.json);
      this.#wantsReasons =
        (this.peer.raw['devlease'] as { error_reason?: unknown } | undefined)?.error_reason === true;
    } catch (err) {
      throw new VfioError('EINVAL', `bad VFIO_USER_VERSION: ${(err as Error).message}`);
    }
    if (v.major !== P.VFIO_USER_MAJOR) {
      this.peer = null;
      throw new VfioError('ENOTSUP', `protocol major ${v.major} is not supported (${P.VFIO_USER_MAJOR})`);
    }
    if (this.#refusal !== null || this.#model === null) {
      this.peer = null;
      throw this.#refusal instanceof VfioError ? this.#refusal : new VfioError('EIO', 'device unavailable');
    }
    // The model may decide now, with the client's capabilities (devlease: the lease request rides here).
    let granted: Record<string, unknown> = {};
    if (this.#model.negotiate) {
      try {
        granted = await this.#model.negotiate(this.peer.raw);
      } catch (err) {
        this.peer = null;
        throw err;
      }
    }
    const cfg = this.#config;
    const ours: Record<string, unknown> = {
      ...granted,
      max_msg_fds: cfg.maxMsgFds,
      max_data_xfer_size: cfg.maxDataXferSize,
      max_dma_maps: cfg.maxDmaMaps,
      pgsizes: cfg.pgsizes,
      ...(this.#model.versionCapabilities?.() ?? {}),
    };
    // The reply says reasons will come, so the client reads error payloads as text only from a server that does.
    if (this.#wantsReasons)
      ours['devlease'] = { ...(ours['devlease'] as object | undefined), error_reason: true };
    // Only what the client proposed; twin_socket is declined by leaving it out (vfio-user.rst, "Reply").
    const capabilities = replyCapabilities(this.peer.raw, ours);
    const minor = Math.min(v.minor, P.VFIO_USER_MINOR);
    return { payload: encodeVersion(P.VFIO_USER_MAJOR, minor, { capabilities }) };
  }
}
