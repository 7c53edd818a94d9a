// A client connection before and after its lease is granted. The vfio-user
// server creates the device model when the client connects; the lease
// request arrives with VERSION (devlease capabilities, or the socket's kind
// for a stock vfio-user client), so the lease is granted in negotiate() and
// every later request is served by that lease's LeaseSession.

import { VfioError } from '../errors.js';
import type {
  DmaMapRequest,
  DmaUnmapRequest,
  FeatureReply,
  FeatureRequest,
  IrqDescription,
  IrqSetRequest,
  Issued,
  RegionDescription,
  VfioUserDeviceModel,
} from '../vfio/user/device-model.js';
import type { PeerDma } from '../vfio/user/peer-dma.js';
import type { RegionIoFds } from '../vfio/user/region-io-fds.js';
import type { Lease } from './lease.js';
import { readLeaseRequest } from './lease-request.js';
import type { LeaseTable } from './leases.js';
import type { CallerContext } from './policy.js';
import { LeaseSession } from './session.js';

/** How long a connection whose grant failed after VERSION waits for its next request (to answer it). */
const GRANT_FAILURE_GRACE_MS = 2000;

export class PendingSession implements VfioUserDeviceModel {
  readonly #kind: string;
  readonly #ctx: CallerContext;
  readonly #table: LeaseTable;
  readonly #closeSocket: () => void;
  #session: LeaseSession | null = null;
  #ended = false;
  readonly #endHooks: (() => void)[] = [];
  readonly #versionHooks: (() => void)[] = [];
  /** The grant VERSION started: settles (never rejects) when its device commands have been answered. */
  #granted: Promise<void> = Promise.resolve();
  #grantDone = true;
  #grantError: VfioError | null = null;

  constructor(kind: string, ctx: CallerContext, table: LeaseTable, closeSocket: () => void) {
    this.#kind = kind;
    this.#ctx = ctx;
    this.#table = table;
    this.#closeSocket = closeSocket;
  }

  /**
   * Called with the client's VERSION capabilities: answers as soon as policy and resources have decided the
   * lease (what the reply carries), while the grant's device commands are still being served; a refusal up
   * to there is VERSION's answer. The rest of the grant is versionSettled(), which the connection awaits
   * before serving the next request: a device refusal of the grant answers that request, and the
   * connection closes (docs/ARCHITECTURE.md, "Lease grant and VERSION").
   */
  async negotiate(clientCaps: Record<string, unknown>): Promise<Record<string, unknown>> {
    let grant: Promise<unknown> | null = null;
    try {
      const request = readLeaseRequest(clientCaps, this.#kind);
      let decided!: (lease: Lease) => void;
      const early = new Promise<Lease>((r) => {
        decided = r;
      });
      const granted = this.#table.grant(this.#ctx, request, decided);
      // A refusal before the decision (policy, resources) rejects the race; after it, versionSettled() has it.
      const lease = await Promise.race([early, granted]);
      // A devlease client proposes devlease.request (the client library always does, {} for defaults); a stock
      // client (QEMU) proposes no devlease, and error_reason alone is not a lease client's negotiation.
      const ext = clientCaps['devlease'];
      const devlease = typeof ext === 'object' && ext !== null && 'request' in ext;
      this.#session = new LeaseSession(lease, this.#table, { devlease });
      grant = granted;
      this.#grantDone = false;
      this.#granted = granted.then(
        () => this.#onGranted(lease),
        (err: unknown) => this.#onGrantFailed(err),
      );
      // What VERSION's reply adds (the vfio-user connection merges it); no versionCapabilities() besides, which
      // would build the same lease info a second time.
      return this.#session.versionCapabilities();
    } finally {
      // Admission counts this connection until its grant has ended, as when VERSION waited for it.
      if (grant) void this.#granted.finally(() => this.#versionDone());
      else this.#versionDone();
    }
  }

  /** Resolves once the grant VERSION started has completed; rejects with why it failed (see negotiate()). */
  versionSettled(): Promise<void> {
    return this.#granted.then(() => {
      if (this.#grantError) throw this.#grantError;
    });
  }

  #versionDone(): void {
    for (const h of this.#versionHooks.splice(0)) h();
  }

  #onGranted(lease: Lease): void {
    this.#grantDone = true;
    lease.disconnect = () => this.#closeSocket();
    if (this.#ended) {
      // the client vanished while we were granting
      void this.#table.reclaim(lease, 'client gone during the grant');
    }
  }

  #onGrantFailed(err: unknown): void {
    this.#grantDone = true;
    this.#session = null;
    const why = `the lease grant failed after VERSION was answered: ${err instanceof VfioError ? err.reason : (err as Error).message}`;
    this.#grantError =
      err instanceof VfioError
        ? new VfioError(err.code, why, err.errno, { cause: err })
        : new VfioError('EIO', why);
    // The client's next request gets this error and the connection closes (vfio-user connection); one that
    // sends nothing more is closed after a grace, so a connection without a lease is not kept.
    if (!this.#ended) {
      const t = setTimeout(() => this.#closeSocket(), GRANT_FAILURE_GRACE_MS);
      t.unref();
      this.onEnd(() => clearTimeout(t));
    }
  }

  /** No VERSION in time: close the connection (the session ends as for a hang-up). */
  versionTimedOut(): void {
    this.#closeSocket();
  }

  /** `hook` runs once VERSION and the grant it started have ended, granted or refused. */
  onVersionDone(hook: () => void): void {
    this.#versionHooks.push(hook);
  }

  /** Serve a lease another broker granted (an upgrade): VERSION was answered there. */
  adopt(session: LeaseSession): void {
    this.#session = session;
    session.lease.disconnect = () => this.#closeSocket();
    for (const h of this.#versionHooks.splice(0)) h();
  }

  /** The lease's session once VERSION granted it (an upgrade hands it over), else null. */
  get session(): LeaseSession | null {
    return this.#session;
  }

  get kind(): string {
    return this.#kind;
  }

  #s(): LeaseSession {
    if (!this.#session) throw new VfioError('EACCES', 'no lease: the VERSION exchange did not grant one');
    return this.#session;
  }

  deviceInfo(opts?: { request?: boolean }) {
    return this.#s().deviceInfo(opts);
  }
  regionInfo(index: number, opts?: { fd?: boolean }): RegionDescription {
    return this.#s().regionInfo(index, opts);
  }
  regionRead(index: number, offset: bigint, count: number) {
    return this.#s().regionRead(index, offset, count);
  }
  regionWrite(index: number, offset: bigint, data: Uint8Array) {
    return this.#s().regionWrite(index, offset, data);
  }
  dmaMap(req: DmaMapRequest) {
    return this.#s().dmaMap(req);
  }
  dmaUnmap(req: DmaUnmapRequest) {
    return this.#s().dmaUnmap(req);
  }
  /** Once VERSION has succeeded, so the session exists. */
  peerDma(dma: PeerDma) {
    this.#s().peerDma(dma);
  }
  irqInfo(index: number): IrqDescription {
    return this.#s().irqInfo(index);
  }
  setIrqs(req: IrqSetRequest) {
    return this.#s().setIrqs(req);
  }
  reset() {
    return this.#s().reset();
  }
  feature(req: FeatureRequest): FeatureReply {
    return this.#s().feature(req);
  }
  regionIoFds(index: number, opts?: { issued?: Issued }): Promise<RegionIoFds> {
    return this.#s().regionIoFds(index, opts);
  }

  disconnected(reason: string): void {
    this.#end(`session closed: ${reason}`);
  }

  /** The client process exited (its pidfd fired), possibly before its socket closed. */
  processExited(): void {
    this.#end(`process ${this.#ctx.pid} exited`);
    this.#closeSocket();
  }

  onEnd(hook: () => void): void {
    this.#endHooks.push(hook);
  }

  #end(reason: string): void {
    if (this.#ended) return;
    this.#ended = true;
    // A grant still in progress reclaims its lease when it completes (#onGranted).
    if (this.#session && this.#grantDone) void this.#table.reclaim(this.#session.lease, reason);
    for (const h of this.#endHooks.splice(0)) h();
  }
}
