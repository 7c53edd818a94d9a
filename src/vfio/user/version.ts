// VFIO_USER_VERSION capabilities (vfio-user.rst, "Version": the JSON object's
// "capabilities" member). Absent members take the spec's defaults. Vendor
// extensions ride alongside under their own key (devlease uses "devlease").
// Both sides' negotiation rules are here: what a client proposes and accepts,
// and what a server may answer (only members the client proposed).
import { ProtocolError, VfioError } from '../../errors.js';
import { decodeVersion, encodeVersion } from './messages.js';
import {
  DEFAULT_MAX_MSG_FDS,
  SPEC_DEFAULT_MAX_DATA_XFER_SIZE,
  SPEC_DEFAULT_MAX_DMA_MAPS,
  SPEC_DEFAULT_MAX_MSG_FDS,
  SPEC_DEFAULT_PGSIZES,
  VFIO_USER_MAJOR,
  VFIO_USER_MINOR,
} from './protocol.js';

export interface Capabilities {
  /** Most fds the sender accepts in one message. */
  maxMsgFds: number;
  /** Largest `count` the sender accepts in a data transfer message. */
  maxDataXferSize: number;
  maxDmaMaps: number;
  /** Page sizes OR'ed together. */
  pgsizes: number;
  /** twin_socket.supported as sent (devlease never enables twin-socket mode). */
  twinSocket: boolean;
  /** The whole "capabilities" object as received, vendor keys included. */
  raw: Record<string, unknown>;
}

function positiveInt(v: unknown, name: string, fallback: number, min = 0): number {
  if (v === undefined) return fallback;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    const what = min > 0 ? `an integer of at least ${min}` : 'a non-negative integer';
    throw new RangeError(`capability ${name} must be ${what}, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** pgsizes is a u64 mask: 0xfffffffffffff000 (every size from 4 KiB up) is past 2^53, and valid. */
function pageSizes(v: unknown): number {
  if (v === undefined) return SPEC_DEFAULT_PGSIZES;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= 2 ** 64) {
    throw new RangeError(`capability pgsizes must be a 64-bit mask, got ${JSON.stringify(v)}`);
  }
  return v;
}

/**
 * Capabilities nested deeper than this are refused (the capabilities object is the first level, and only objects
 * and arrays count): the whole object is kept (Capabilities.raw) and goes into
 * a broker upgrade's state, whose encoding recurses (a client's 30,000 nested arrays, 60 KB, overflowed its
 * stack and rolled every upgrade back while the lease lived).
 */
export const MAX_CAPABILITY_DEPTH = 32;

/** Whether `v` holds objects or arrays nested more than `limit` levels deep (`v` itself the first level). */
function deeperThan(v: unknown, limit: number): boolean {
  let level: unknown[] = [v];
  for (let depth = 1; ; depth++) {
    const next: unknown[] = [];
    for (const x of level) {
      if (x === null || typeof x !== 'object') continue;
      for (const y of Object.values(x)) if (y !== null && typeof y === 'object') next.push(y);
    }
    if (next.length === 0) return false;
    if (depth + 1 > limit) return true;
    level = next;
  }
}

/** Read the "capabilities" member of a version JSON object; throws RangeError on ill-typed members. */
export function readCapabilities(json: Record<string, unknown>): Capabilities {
  const caps = json['capabilities'] ?? {};
  if (caps === null || typeof caps !== 'object' || Array.isArray(caps)) {
    throw new RangeError('"capabilities" must be a JSON object');
  }
  const c = caps as Record<string, unknown>;
  if (deeperThan(c, MAX_CAPABILITY_DEPTH))
    throw new RangeError(`"capabilities" nests deeper than ${MAX_CAPABILITY_DEPTH} levels`);
  const twin = c['twin_socket'];
  if (twin !== undefined && (twin === null || typeof twin !== 'object')) {
    throw new RangeError('capability twin_socket must be an object');
  }
  return {
    maxMsgFds: positiveInt(c['max_msg_fds'], 'max_msg_fds', SPEC_DEFAULT_MAX_MSG_FDS),
    // At least 1: a transfer is split into pieces of this size (0 never ended).
    maxDataXferSize: positiveInt(
      c['max_data_xfer_size'],
      'max_data_xfer_size',
      SPEC_DEFAULT_MAX_DATA_XFER_SIZE,
      1,
    ),
    maxDmaMaps: positiveInt(c['max_dma_maps'], 'max_dma_maps', SPEC_DEFAULT_MAX_DMA_MAPS),
    pgsizes: pageSizes(c['pgsizes']),
    twinSocket: (twin as { supported?: unknown } | undefined)?.supported === true,
    raw: c,
  };
}

/**
 * The server's VERSION reply capabilities: `ours`, restricted to the members the client proposed
 * (vfio-user.rst, "Version": "The capability list must be a subset of those proposed"). A member left out
 * takes the spec's default on the client's side.
 */
export function replyCapabilities(
  proposed: Record<string, unknown>,
  ours: Record<string, unknown>,
): Record<string, unknown> {
  return Object.fromEntries(Object.entries(ours).filter(([key]) => Object.hasOwn(proposed, key)));
}

/**
 * A client's VERSION as the server reads it: its version numbers and capabilities, and whether it asked
 * for reasons in error replies (devlease "error_reason"). Throws VfioError EINVAL when it cannot be read.
 */
export function readVersionRequest(payload: Uint8Array): {
  major: number;
  minor: number;
  peer: Capabilities;
  wantsReasons: boolean;
} {
  try {
    const v = decodeVersion(payload);
    const peer = readCapabilities(v.json);
    const ext = peer.raw['devlease'] as { error_reason?: unknown } | undefined;
    return { major: v.major, minor: v.minor, peer, wantsReasons: ext?.error_reason === true };
  } catch (err) {
    throw new VfioError('EINVAL', `bad VFIO_USER_VERSION: ${(err as Error).message}`);
  }
}

/**
 * The server's VERSION reply payload: its limits and what the model adds (`granted` by its negotiate(),
 * `extra` its versionCapabilities()), restricted to what the client proposed; "error_reason" stated when
 * reasons will come, so the client reads error payloads as text only from a server that sends them.
 */
export function versionReply(
  request: { minor: number; peer: Capabilities; wantsReasons: boolean },
  limits: { maxMsgFds: number; maxDataXferSize: number; maxDmaMaps: number; pgsizes: number },
  granted: Record<string, unknown>,
  extra: Record<string, unknown>,
): Uint8Array {
  // Object.assign, not spreads: on Node 20 (V8 11.3) a spread followed by new properties makes a new hidden class
  // nearly every reply (docs/performance-history.md, issue 16, twenty-fourth pass §4). So `granted` and `extra` must not
  // carry members of parsed JSON: an own `__proto__` would set this copy's prototype.
  const ours: Record<string, unknown> = Object.assign(
    {},
    granted,
    {
      max_msg_fds: limits.maxMsgFds,
      max_data_xfer_size: limits.maxDataXferSize,
      max_dma_maps: limits.maxDmaMaps,
      pgsizes: limits.pgsizes,
    },
    extra,
  );
  if (request.wantsReasons) ours['devlease'] = Object.assign({}, ours['devlease'], { error_reason: true });
  // Only what the client proposed; twin_socket is declined by leaving it out (vfio-user.rst, "Reply").
  const capabilities = replyCapabilities(request.peer.raw, ours);
  return encodeVersion(VFIO_USER_MAJOR, Math.min(request.minor, VFIO_USER_MINOR), { capabilities });
}

/** The smallest page size in a pgsizes mask (the alignment DMA maps must keep). */
export function minPageSize(pgsizes: number): number {
  const mask = BigInt(pgsizes);
  if (mask <= 0n) return SPEC_DEFAULT_PGSIZES;
  let p = 1n;
  while ((mask & p) === 0n) p <<= 1n;
  return Number(p);
}

/**
 * The pgsizes a devlease client proposes: every power of two from 4 KiB to 2^52. The client aligns its
 * maps to whatever the server's smallest page is; proposing the member is what lets the server state it.
 */
export const CLIENT_PGSIZES = 2 ** 53 - 2 ** 12;

/**
 * A client's VERSION payload. Every spec capability is proposed (a reply names only proposed members),
 * plus devlease's: "error_reason" asks for the server's reason text in error replies. `extra` adds members
 * or overrides ours; its "devlease" object is merged into ours.
 */
export function versionRequest(extra: Record<string, unknown>, maxDataXferSize: number): Uint8Array {
  const devlease = { error_reason: true, ...((extra['devlease'] as object | undefined) ?? {}) };
  const capabilities = {
    max_msg_fds: DEFAULT_MAX_MSG_FDS,
    max_data_xfer_size: maxDataXferSize,
    max_dma_maps: SPEC_DEFAULT_MAX_DMA_MAPS,
    pgsizes: CLIENT_PGSIZES,
    ...extra,
    devlease,
  };
  return encodeVersion(VFIO_USER_MAJOR, VFIO_USER_MINOR, { capabilities });
}

/**
 * Check a server's VERSION reply. Members we did not propose (libvfio-user adds "migration") are accepted
 * and kept in `raw`; twin_socket enabled without being proposed is not. `errorReasons`: the server said
 * it sends reason text in error replies (devlease "error_reason"). Throws ProtocolError.
 */
export function readVersionReply(payload: Uint8Array): {
  major: number;
  minor: number;
  capabilities: Capabilities;
  errorReasons: boolean;
} {
  let v: ReturnType<typeof decodeVersion>;
  let capabilities: Capabilities;
  try {
    v = decodeVersion(payload);
    capabilities = readCapabilities(v.json);
  } catch (err) {
    throw new ProtocolError(`bad VERSION reply: ${(err as Error).message}`);
  }
  if (v.major !== VFIO_USER_MAJOR || v.minor > VFIO_USER_MINOR) {
    throw new ProtocolError(
      `server answered version ${v.major}.${v.minor} to ${VFIO_USER_MAJOR}.${VFIO_USER_MINOR}`,
    );
  }
  if (capabilities.twinSocket) throw new ProtocolError('server enabled twin_socket, which was not proposed');
  const ext = capabilities.raw['devlease'] as { error_reason?: unknown } | undefined;
  return { major: v.major, minor: v.minor, capabilities, errorReasons: ext?.error_reason === true };
}
