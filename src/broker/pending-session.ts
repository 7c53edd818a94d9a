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
  RegionDescription,
  VfioUserDeviceModel,
} from '../vfio/user/device-model.js';
import type { RegionIoFds } from '../vfio/user/region-io-fds.js';
import { readLeaseRequest } from './lease-request.js';
import type { LeaseTable } from './leases.js';
import type { CallerContext } from './policy.js';
import { LeaseSession } from './session.js';

export class PendingSession implements VfioUserDeviceModel {
  readonly #kind: string;
  readonly #ctx: CallerContext;
  readonly #table: LeaseTable;
  readonly #closeSocket: () => void;
  #session: LeaseSession | null = null;
  #ended = false;
  readonly #endHooks: (() => void)[] = [];
  readonly #versionHooks: (() => void)[] = [];

  constructor(kind: string, ctx: CallerContext, table: LeaseTable, closeSocket: () => void) {
    this.#kind = kind;
    this.#ctx = ctx;
    this.#table = table;
    this.#closeSocket = closeSocket;
  }

  /** Called with the client's VERSION capabilities; grants the lease or refuses with the policy's reason. */
  async negotiate(clientCaps: Record<string, unknown>): Promise<Record<string, unknown>> {
    try {
      return await this.#negotiate(clientCaps);
    } finally {
      for (const h of this.#versionHooks.splice(0)) h();
    }
  }

  /** `hook` runs once VERSION has been answered, granted or refused. */
  onVersionDone(hook: () => void): void {
    this.#versionHooks.push(hook);
  }

  /** No VERSION in time: close the connection (the session ends as for a hang-up). */
  versionTimedOut(): void {
    this.#closeSocket();
  }

  async #negotiate(clientCaps: Record<string, unknown>): Promise<Record<string, unknown>> {
    const request = readLeaseRequest(clientCaps, this.#kind);
    const lease = await this.#table.grant(this.#ctx, request);
    // A devlease client proposes devlease.request (the client library always does, {} for defaults); a stock
    // client (QEMU) proposes no devlease, and error_reason alone is not a lease client's negotiation.
    const ext = clientCaps['devlease'];
    const devlease = typeof ext === 'object' && ext !== null && 'request' in ext;
    this.#session = new LeaseSession(lease, this.#table, { devlease });
    lease.disconnect = () => this.#closeSocket();
    if (this.#ended) {
      // the client vanished while we were granting
      void this.#table.reclaim(lease, 'client gone during the grant');
    }
    return this.#session.versionCapabilities();
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

  versionCapabilities(): Record<string, unknown> {
    return this.#session?.versionCapabilities() ?? {};
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
  regionIoFds(index: number): Promise<RegionIoFds> {
    return this.#s().regionIoFds(index);
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
    if (this.#session) void this.#table.reclaim(this.#session.lease, reason);
    for (const h of this.#endHooks.splice(0)) h();
  }
}
