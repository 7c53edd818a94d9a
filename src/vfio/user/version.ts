// VFIO_USER_VERSION capabilities (vfio-user.rst, "Version": the JSON object's
// "capabilities" member). Absent members take the spec's defaults. Vendor
// extensions ride alongside under their own key (devlease uses "devlease").
import {
  SPEC_DEFAULT_MAX_DATA_XFER_SIZE,
  SPEC_DEFAULT_MAX_DMA_MAPS,
  SPEC_DEFAULT_MAX_MSG_FDS,
  SPEC_DEFAULT_PGSIZES,
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

function positiveInt(v: unknown, name: string, fallback: number): number {
  if (v === undefined) return fallback;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new RangeError(`capability ${name} must be a non-negative integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** Read the "capabilities" member of a version JSON object; throws RangeError on ill-typed members. */
export function readCapabilities(json: Record<string, unknown>): Capabilities {
  const caps = json['capabilities'] ?? {};
  if (caps === null || typeof caps !== 'object' || Array.isArray(caps)) {
    throw new RangeError('"capabilities" must be a JSON object');
  }
  const c = caps as Record<string, unknown>;
  const twin = c['twin_socket'];
  if (twin !== undefined && (twin === null || typeof twin !== 'object')) {
    throw new RangeError('capability twin_socket must be an object');
  }
  return {
    maxMsgFds: positiveInt(c['max_msg_fds'], 'max_msg_fds', SPEC_DEFAULT_MAX_MSG_FDS),
    maxDataXferSize: positiveInt(
      c['max_data_xfer_size'],
      'max_data_xfer_size',
      SPEC_DEFAULT_MAX_DATA_XFER_SIZE,
    ),
    maxDmaMaps: positiveInt(c['max_dma_maps'], 'max_dma_maps', SPEC_DEFAULT_MAX_DMA_MAPS),
    pgsizes: positiveInt(c['pgsizes'], 'pgsizes', SPEC_DEFAULT_PGSIZES),
    twinSocket: (twin as { supported?: unknown } | undefined)?.supported === true,
    raw: c,
  };
}

/** The smallest page size in a pgsizes mask (the alignment DMA maps must keep). */
export function minPageSize(pgsizes: number): number {
  const mask = BigInt(pgsizes);
  if (mask <= 0n) return SPEC_DEFAULT_PGSIZES;
  let p = 1n;
  while ((mask & p) === 0n) p <<= 1n;
  return Number(p);
}
