// One client connection of a VfioUserServer: framing checks on receipt,
// then the requests in arrival order through validate.ts into the device
// model, and the replies back in the same order. A request waits for the one
// ahead of it, except those a model may pipeline (DMA_MAP, SET_IRQS,
// GET_REGION_IO_FDS start once the request ahead has issued its device
// calls; at most MAX_IN_FLIGHT at once: request-order.ts); one with nothing
// ahead of it is served at once when the model answers synchronously
// (#serveNow). What each request does once
// VERSION is done — its checks, the model's call, its reply — is dispatch.ts;
// its fds' ownership while the model runs, and its reply message, are
// request-outcome.ts.
// A message that breaks framing closes this connection only; one whose fds
// this process could not take (its fd table full) is refused EMFILE alone
// (fds-lost.ts). A reply is the answer to one of the server's own commands
// (DMA_READ/DMA_WRITE, peer-dma.ts), routed as soon as it is read.
import { ProtocolError, VfioError } from '../../errors.js';
import type { Fd } from '../../sys/fd.js';
import { decodeMessage, isReply, type VfioUserMessage, wantsReply } from './codec.js';
import { ConnectionReplies } from './connection-replies.js';
import type { ConnectionInfo, Issued, VfioUserDeviceModel } from './device-model.js';
import { dispatchRequest } from './dispatch.js';
import { FdsLostError, requestFdsLost } from './fds-lost.js';
import { offerPeerDma, type PeerCommands, type PeerDmaState } from './peer-dma.js';
import * as P from './protocol.js';
import { PIPELINED, QUEUED, RequestOrder, type Turn } from './request-order.js';
import { errorReplyMessage, type Outcome, replyMessage, runWithFds } from './request-outcome.js';
import { closeAll, type Reply } from './request-replies.js';
import type { MessageSocket, ReceivedRecord } from './transport.js';
import * as V from './validate.js';
import { type Capabilities, readCapabilities, readVersionRequest, versionReply } from './version.js';

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
  /** The model's commands to the client (peer-dma.ts), for a late reply to one that timed out (added later). */
  peerDma?: PeerDmaState;
}

// Flow control (MAX_PENDING, REPLY_HIGH_WATER, REPLY_HARD_LIMIT) and when replies leave: connection-replies.ts.
export {
  MAX_PENDING,
  REPLY_FDS_HIGH_WATER,
  REPLY_HARD_LIMIT,
  REPLY_HIGH_WATER,
} from './connection-replies.js';
export { MAX_IN_FLIGHT } from './request-order.js';

export class VfioUserConnection {
  readonly info: ConnectionInfo;
  readonly socket: MessageSocket;
  /** The client's version capabilities, once negotiated. */
  peer: Capabilities | null = null;
  /** Resolves with the close reason once the model has been told (disconnected() returned). */
  readonly closed: Promise<string>;
  /** Called when VERSION succeeds (the server's admission stops counting the connection: util/admission.ts). */
  onVersion: (() => void) | null = null;
  #config: ConnectionConfig;
  #model: VfioUserDeviceModel | null = null;
  #refusal: unknown = null;
  readonly #order: RequestOrder;
  readonly #replies: ConnectionReplies;
  #closing: string | null = null;
  /** The model's work after an early VERSION reply failed (versionSettled): the next request's answer. */
  #settleError: VfioError | null = null;
  #resolveClosed!: (reason: string) => void;
  /** The client proposed devlease "error_reason": error replies carry the reason (kept even if VERSION fails). */
  #wantsReasons = false;
  /** The model's DMA_READ/DMA_WRITE to the client, once VERSION succeeded (only for a model that asks: peerDma). */
  #peerDma: PeerCommands | null = null;

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
    const created = (async () => {
      try {
        this.#model = await createDevice(info, socket);
        // A session negotiated elsewhere has had its VERSION: the model gets the client's memory now.
        if (adopted) {
          this.#givePeerDma();
          if (adopted.peerDma) this.#peerDma?.adopt(adopted.peerDma);
        }
      } catch (err) {
        this.#refusal = err;
        if (!(err instanceof VfioError))
          config.log(`vfio-user connection ${info.id}: createDevice failed`, err);
      }
    })();
    this.#replies = new ConnectionReplies(
      socket,
      () => this.#order.pending,
      () => (this.#peerDma?.outstanding ?? 0) > 0,
      (reason, logLine) => {
        if (logLine) config.log(`vfio-user connection ${info.id}: ${logLine}`);
        this.close(reason);
      },
    );
    this.#order = new RequestOrder(
      created,
      () => this.#replies.flowControl(),
      (err) => {
        config.log(`vfio-user connection ${info.id}: a request's handling threw; closing it`, err);
        this.close(`internal error: ${(err as Error)?.message ?? String(err)}`);
      },
    );
    // The replies to the requests one read brought that are answered at once (#serveNow) go in one sendmsg.
    (socket as MessageSocket & { corkReads?(on: boolean): void }).corkReads?.(true);
    socket.on('message', (m) => this.#receive(m));
    socket.on('drain', () => this.#replies.flowControl());
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
    this.#replies.holding = true;
    this.socket.pause();
  }

  unhold(): void {
    this.#replies.holding = false;
    this.#replies.flowControl();
  }

  /** Resolves once every request read so far has been answered and the replies are sent. */
  async idle(): Promise<void> {
    await this.#order.idle();
    this.#replies.flush();
  }

  /** What another process needs to carry this session on (see the constructor's `adopted`). */
  handover(): AdoptedSession | null {
    if (this.peer === null) return null;
    const peerDma = this.#peerDma?.handover();
    return {
      peerCapabilities: this.peer.raw,
      wantsReasons: this.#wantsReasons,
      ...(peerDma ? { peerDma } : {}),
    };
  }

  /** Close this connection (idempotent); the model's disconnected() runs after any request in progress. */
  close(reason = 'closed by server'): void {
    if (this.#closing !== null) return;
    this.#closing = reason;
    // EPIPE before disconnected(), which waits a turn more: what the model chained on that failure runs first.
    if (this.#peerDma?.close(reason)) this.#order.after(() => new Promise((r) => setImmediate(r)));
    // Replies given before the close still go (as a reply then close() did when each was sent at once).
    this.#replies.flush();
    this.#replies.close();
    try {
      this.socket.close();
    } catch {
      // already closed
    }
    this.#order.after(async () => {
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
      if (isReply(msg)) {
        // Routed now, not queued: a request being served may be waiting for it (a model's DMA_READ).
        const extra = fds.length > 0 ? `${fds.length} fd(s)` : rec.fdsLost ? 'fds (not received)' : null;
        if (!this.#peerDma?.route(msg, extra))
          throw new ProtocolError(`reply (msg_id ${msg.msgId}) to a command this server never sent`);
        closeAll(fds);
        return;
      }
    } catch (err) {
      closeAll(fds);
      this.#config.log(`vfio-user connection ${this.info.id}: ${(err as Error).message}; closing it`);
      this.close(`protocol error: ${(err as Error).message}`);
      return;
    }
    // Its fds did not arrive: it is refused in its turn, like any request the model refuses.
    const lost = rec.fdsLost ? requestFdsLost(this.#config, this.info.id, msg, rec.fdsLost) : null;
    // Nothing ahead of it: served now, in this callback, without the queue's promises (a register read's
    // per-message cost, issue 16). Its answer is what the queue would give; see #serveNow.
    if (this.#order.clear && this.peer !== null && this.#model !== null && !QUEUED.has(msg.command)) {
      this.#serveNow(msg, fds, lost);
      return;
    }
    // In arrival order, replies too; a pipelined one may start before the one ahead is answered.
    const pipelined = PIPELINED.has(msg.command) && this.peer !== null;
    this.#order.enqueue(pipelined, (turn) => this.#handle(msg, fds, turn, lost));
  }

  /**
   * A request with every earlier one answered (so nothing to wait for), not VERSION nor pipelined: the model is
   * called now and, if it answers synchronously, the reply is sent before this returns — no promise, no queue
   * entry. A model that answers with a promise makes it a request in flight from there: the next requests
   * queue behind it as behind any other.
   */
  #serveNow(msg: VfioUserMessage, fds: Fd[], lost: FdsLostError | null): void {
    const outcome = this.#run(msg, fds, undefined, lost);
    if (outcome instanceof Promise) this.#order.inFlight(outcome, (o) => this.#finish(msg, o));
    else this.#finish(msg, outcome, true);
  }

  /**
   * `issued`: given to a pipelined request's model call; `served`: the model is done with this request;
   * `answered`: every earlier request is answered (this one's reply goes after).
   */
  async #handle(
    msg: VfioUserMessage,
    fds: Fd[],
    { issued, served, answered }: Turn,
    lost: FdsLostError | null,
  ) {
    if (this.#closing !== null) {
      closeAll(fds);
      return;
    }
    const outcome = await this.#run(msg, fds, issued, lost);
    // Done with the model: the next pipelined request need not wait for this one's turn to reply.
    issued?.();
    served();
    await answered;
    this.#finish(msg, outcome);
    // An early VERSION reply: later requests wait (this entry of the queue) until the model has finished.
    if (
      outcome.ok &&
      msg.command === P.VFIO_USER_VERSION &&
      this.peer !== null &&
      this.#model?.versionSettled
    ) {
      try {
        await this.#model.versionSettled();
      } catch (err) {
        this.#settleError =
          err instanceof VfioError ? err : new VfioError('EIO', `after VERSION: ${(err as Error).message}`);
      }
    }
  }

  /**
   * The model's part of a request: its reply or its failure, synchronously when the model answered so. The
   * request's fds are closed once it is done with them, unless the model took them. `lost`: its fds did not
   * arrive; it fails with that.
   */
  #run(
    msg: VfioUserMessage,
    fds: Fd[],
    issued: Issued | undefined,
    lost: FdsLostError | null,
  ): Outcome | Promise<Outcome> {
    return runWithFds(
      fds,
      (take) => {
        // The model's work after an early VERSION reply failed: this request is answered with that failure.
        if (this.#settleError !== null) throw this.#settleError;
        if (lost !== null) throw lost;
        // Nothing but VERSION before VERSION; after it, the request itself (dispatch.ts).
        if (this.peer === null) return this.#beforeVersion(msg, fds);
        const model = this.#model as VfioUserDeviceModel;
        return dispatchRequest(model, this.#config, this.info.id, this.peer, msg, fds, take, issued);
      },
      (err) => this.#failed(msg, err),
    );
  }

  #failed(msg: VfioUserMessage, err: unknown): Outcome {
    // A VfioError is the model's refusal; anything else is a bug worth a log line (answered EIO).
    if (!(err instanceof VfioError))
      this.#config.log(`vfio-user connection ${this.info.id}: ${P.commandName(msg.command)} failed`, err);
    return { ok: false, err };
  }

  /**
   * Send a request's reply (or error reply), then whatever its failure means for the connection. `now`: served
   * at once while its read is delivered; else the reply goes at the end of this turn (connection-replies.ts).
   * Never throws: a reply that cannot be built, or a model whose `sent` throws, ends the connection — the
   * client is owed a reply it will not get, or the model's state after its reply is unknown.
   */
  #finish(msg: VfioUserMessage, outcome: Outcome, now = false): void {
    try {
      this.#reply(msg, outcome, now);
    } catch (err) {
      const what = `the reply to ${P.commandName(msg.command)} (msg_id ${msg.msgId})`;
      this.#config.log(`vfio-user connection ${this.info.id}: ${what} failed; closing it`, err);
      this.close(`internal error: ${what} failed: ${(err as Error)?.message ?? String(err)}`);
    }
  }

  #reply(msg: VfioUserMessage, outcome: Outcome, now: boolean): void {
    if (outcome.ok) {
      const { fds } = outcome.reply;
      if (!wantsReply(msg)) {
        if (fds) closeAll(fds);
        return;
      }
      this.#replies.send(replyMessage(msg, outcome.reply), fds, now); // takes the fds
      outcome.reply.sent?.();
      return;
    }
    const err = outcome.err;
    if (wantsReply(msg)) this.#replies.send(errorReplyMessage(msg, err, this.#wantsReasons), undefined, now);
    else if (err instanceof VfioError && !(err instanceof FdsLostError)) {
      // (A lost-fds refusal was logged, rate-limited, when it came.)
      const what = `vfio-user connection ${this.info.id}: ${P.commandName(msg.command)}`;
      this.#config.log(`${what} (no_reply) refused: ${err.message}`);
    }
    // Nothing but a successful VERSION opens a session (vfio-user.rst, "Connection Initiation").
    if (this.peer === null) this.close(`${P.commandName(msg.command)} failed before version negotiation`);
    else if (this.#settleError !== null) this.close(`after VERSION: ${(err as Error).message}`);
  }

  /** VERSION is done: a model that asks for it gets the client's memory by message (peer-dma.ts offerPeerDma). */
  #givePeerDma(): void {
    if (!this.#model?.peerDma || this.peer === null) return;
    const what = `vfio-user connection ${this.info.id}`;
    this.#peerDma = offerPeerDma(this.#model, this.peer, this.#config, {
      send: (bytes) => this.socket.send(bytes),
      log: (message) => this.#config.log(`${what}: ${message}`),
      cut: (reason) => {
        this.#config.log(`${what}: ${reason}; closing it`);
        this.close(reason);
      },
      changed: () => this.#replies.flowControl(),
    });
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
    const v = readVersionRequest(payload);
    this.#wantsReasons = v.wantsReasons;
    if (v.major !== P.VFIO_USER_MAJOR) {
      throw new VfioError('ENOTSUP', `protocol major ${v.major} is not supported (${P.VFIO_USER_MAJOR})`);
    }
    if (this.#refusal !== null || this.#model === null) {
      throw this.#refusal instanceof VfioError ? this.#refusal : new VfioError('EIO', 'device unavailable');
    }
    this.peer = v.peer;
    // The model may decide now, with the client's capabilities (devlease: the lease request rides here).
    // Then it gets the client's memory (peerDma), before any later request is served.
    let granted: Record<string, unknown> = {};
    try {
      if (this.#model.negotiate) granted = await this.#model.negotiate(v.peer.raw);
      this.#givePeerDma();
    } catch (err) {
      this.peer = null;
      throw err;
    }
    const reply = versionReply(v, this.#config, granted, this.#model.versionCapabilities?.() ?? {});
    this.onVersion?.();
    return { payload: reply };
  }
}
