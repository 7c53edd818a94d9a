// The SA-1 simulator: a vfio-user server whose device model runs in a
// worker thread. startSimulator() serves it in this process;
// spawnSimulator() runs `devlease sim` as a child process with a JSON-lines
// control channel on stdin for fault injection.

import { RateLimitedLog } from '../../sys/rate-limited-log.js';
import { Admission } from '../../util/admission.js';
import { VfioUserServer } from '../../vfio/user/server.js';
import { resolveOptions, type Sa1Options } from '../model/options.js';
import type { DeviceStats, InjectRequest } from './commands.js';
import { resolveMaxDmaMaps } from './dma-limit.js';
import { DEFAULT_COMMAND_TIMEOUT_MS, DeviceWorker, Sa1Frontend } from './frontend.js';
import { type Owner, OwnerSeat } from './owner-seat.js';

export { makeFirmwareImage } from '../model/firmware.js';
export { DEFAULT_OPTIONS, OptionError, resolveOptions, type Sa1Options } from '../model/options.js';
export { type ChildSimulator, spawnSimulator } from './child.js';
export type { DeviceStats, InjectRequest } from './commands.js';
export { dmaMapRoom, SIM_GUARD_RESERVE } from './dma-limit.js';

export interface SimulatorOptions extends Partial<Sa1Options> {
  socketPath: string;
  /** Socket file mode (default 0o600). */
  mode?: number;
  /** Bound on one owner command inside the device (default 10 s); past it the request fails with EIO. */
  commandTimeoutMs?: number;
  /**
   * How long a VERSION that finds an owner waits for that owner's disconnect to finish before being refused
   * EBUSY (default 1 s). The owner is the connection whose VERSION succeeded (owner-seat.ts).
   */
  ownerHandoverMs?: number;
  /**
   * Connections that have not completed VERSION, in all (default 64) and of one uid (default 16): one more is
   * closed as soon as it is accepted. Each costs the simulator a descriptor until then.
   */
  maxPending?: number;
  maxPendingPerUid?: number;
  /**
   * A connection whose VERSION has not succeeded this long after it was accepted is closed (default 5 s past
   * ownerHandoverMs, which a VERSION may spend waiting for the owner's disconnect; must exceed it).
   */
  versionTimeoutMs?: number;
  /**
   * The max_dma_maps VERSION advertises, and the most maps the device holds (one more is refused ENOSPC). Default
   * and upper bound: what the process's SIGBUS guard table has left after the queue pages and granules
   * (dmaMapRoom(); 3,904 with the default options). docs/SA-1.md, "IOMMU".
   */
  maxDmaMaps?: number;
  /** Where the server's lines go: one line each, rate limited per kind (default console.warn). */
  log?: (message: string) => void;
}

/** SimulatorOptions' defaults for connections before VERSION (docs/SA-1.md, "Connections"). */
export const SIM_MAX_PENDING = 64;
export const SIM_MAX_PENDING_PER_UID = 16;
/** versionTimeoutMs's default: this long past ownerHandoverMs. */
export const SIM_VERSION_GRACE_MS = 5000;

export interface SimulatorHandle {
  readonly socketPath: string;
  readonly options: Sa1Options;
  /** The max_dma_maps advertised and held (SimulatorOptions.maxDmaMaps, or its default). */
  readonly maxDmaMaps: number;
  /**
   * Fault injection (datasheet §9): never reachable through a BAR. A promise while the owner has memory
   * without an fd (the device may be waiting on this thread then): await it.
   */
  inject(req: InjectRequest): void | Promise<void>;
  injectHang(): void | Promise<void>;
  injectFault(queue: number, code?: number, iova?: bigint): void | Promise<void>;
  /** Per-descriptor delay in ms (all queues, or one queue); 0 removes it. */
  setDescriptorDelay(ms: number, queue?: number): void | Promise<void>;
  /** Drop the next `count` interrupts (optionally only of one irq index / vector). */
  dropInterrupts(count: number, filter?: { index?: number; vector?: number }): void | Promise<void>;
  stats(): Promise<DeviceStats>;
  /** Whether an owner is connected. */
  readonly ownerConnected: boolean;
  /**
   * The owner's connection (id; pid as SO_PEERCRED saw it at connect), how many VERSIONs wait for its
   * disconnect (`ownerHandoverMs`), and how many connections are open.
   */
  owner(): { owner: Owner | null; waiting: number; connections: number };
  /** Stop serving, drop the owner, stop the device, remove the socket. Idempotent. */
  close(): Promise<void>;
}

/**
 * The server's log, one line per event and rate limited per kind (the connection number left out of the
 * key): a client repeating a request that fails inside the device costs a few lines and a count, never a
 * line with a stack trace per request.
 */
function rateLimited(sink: (message: string) => void): (message: string, err?: unknown) => void {
  const limiter = new RateLimitedLog(sink);
  return (message, err) => {
    const detail =
      err === undefined ? '' : `: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`;
    limiter.log(message.replace(/connection \d+/, 'connection N'), `${message}${detail}`);
  };
}

/**
 * What a connection may cost before its VERSION: without it, connections that never spoke were held for good
 * (3,000 of them took the simulator from 220 fds to 3,220; at ~19,900 accept failed EMFILE and the owner's own
 * connection was cut).
 */
function admission(opts: SimulatorOptions, handoverMs: number, sink: (line: string) => void): Admission {
  const versionTimeoutMs = opts.versionTimeoutMs ?? handoverMs + SIM_VERSION_GRACE_MS;
  if (versionTimeoutMs <= handoverMs) {
    throw new RangeError(
      `versionTimeoutMs (${versionTimeoutMs}) must exceed ownerHandoverMs (${handoverMs}): a VERSION may wait that long for the owner`,
    );
  }
  const limits = {
    versionTimeoutMs,
    maxPending: opts.maxPending ?? SIM_MAX_PENDING,
    maxPendingPerUid: opts.maxPendingPerUid ?? SIM_MAX_PENDING_PER_UID,
  };
  const names = {
    versionTimeoutMs: 'versionTimeoutMs',
    maxPending: 'maxPending',
    maxPendingPerUid: 'maxPendingPerUid',
  };
  return new Admission(limits, names, (line) => sink(`vfio-user server: ${line}`));
}

export async function startSimulator(opts: SimulatorOptions): Promise<SimulatorHandle> {
  const options = resolveOptions(opts);
  const maxDmaMaps = resolveMaxDmaMaps(options, opts.maxDmaMaps);
  const handoverMs = opts.ownerHandoverMs ?? 1000;
  const sink = opts.log ?? ((message: string) => console.warn(`devlease: ${message}`));
  const pending = admission(opts, handoverMs, sink);
  const log = rateLimited(sink);
  const device = await DeviceWorker.start(
    options,
    opts.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS,
    maxDmaMaps,
    (message, err) => log(`SA-1: ${message}`, err),
  );
  const seat = new OwnerSeat(handoverMs);

  let server: VfioUserServer;
  try {
    server = VfioUserServer.listen(opts.socketPath, {
      mode: opts.mode,
      maxDmaMaps,
      log,
      admission: pending,
      // The owner is taken at VERSION (Sa1Frontend.negotiate), not here: a connection that never speaks owns nothing.
      createDevice: (conn, socket) => {
        let hungUp = false;
        socket.on('close', () => {
          hungUp = true;
        });
        return new Sa1Frontend(device, () => seat.take(conn, () => hungUp));
      },
    });
  } catch (err) {
    await device.close();
    throw err;
  }

  let closing: Promise<void> | null = null;
  const inject = (req: InjectRequest): void | Promise<void> => device.inject(req);
  return {
    socketPath: opts.socketPath,
    options,
    maxDmaMaps,
    inject,
    injectHang: () => inject({ kind: 'hang' }),
    injectFault: (queue, code, iova) => inject({ kind: 'fault', queue, code, iova }),
    setDescriptorDelay: (ms, queue) => inject({ kind: 'delay', ms, queue }),
    dropInterrupts: (count, filter = {}) => inject({ kind: 'dropIrq', count, ...filter }),
    stats: () => device.stats(),
    get ownerConnected() {
      return seat.owner !== null;
    },
    owner: () => ({ owner: seat.owner, waiting: seat.waiting, connections: server.connections.size }),
    close() {
      closing ??= (async () => {
        await server.close();
        await device.close();
      })();
      return closing;
    },
  };
}
