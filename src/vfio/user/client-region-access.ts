// The vfio-user client's region access (REGION_READ, REGION_WRITE): an access larger than the
// negotiated transfer size is split into messages, pipelined (each with its own deadline and reply) at most
// MAX_IN_FLIGHT at a time, while a register read stays one message, built and checked in place. Kept
// apart from client.ts, which owns the connection, and client-queries.ts, whose queries are one
// message each; a malformed reply still fails the connection through the client's `fail`.
import type { CallOptions } from './channel.js';
import { closeAll, type Requester, regionAccessHead, regionReadData } from './client-queries.js';
import { encodeRegionAccess } from './messages.js';
import * as P from './protocol.js';

/** Read `count` bytes, split into pipelined messages of at most `maxTransfer` bytes. */
export async function regionRead(
  c: Requester,
  maxTransfer: number,
  index: number,
  offset: bigint | number,
  count: number,
  opts?: CallOptions,
): Promise<Buffer> {
  // A register read is one message: no split, no join.
  if (Number.isSafeInteger(count) && count > 0 && count <= maxTransfer) {
    return readOne(c, index, BigInt(offset), count, opts);
  }
  checkCount(count);
  const out = Buffer.allocUnsafe(count);
  await eachChunk(BigInt(offset), count, maxTransfer, async (off, n, at) => {
    out.set(await readOne(c, index, off, n, opts), at);
  });
  return out;
}

/** One REGION_READ message; the data is a view of the reply (the reply is this call's own). */
async function readOne(
  c: Requester,
  index: number,
  off: bigint,
  n: number,
  opts?: CallOptions,
): Promise<Buffer> {
  const r = await c.request(P.VFIO_USER_REGION_READ, regionAccessHead(off, index, n), [], opts);
  closeAll(r.fds);
  return regionReadData(c, r.payload, off, index, n);
}

/** Write `data`, split into pipelined messages of at most `maxTransfer` bytes. */
export async function regionWrite(
  c: Requester,
  maxTransfer: number,
  index: number,
  offset: bigint | number,
  data: Uint8Array,
  opts?: CallOptions,
): Promise<void> {
  checkCount(data.byteLength);
  await eachChunk(BigInt(offset), data.byteLength, maxTransfer, async (off, n, at) => {
    const r = await c.request(
      P.VFIO_USER_REGION_WRITE,
      encodeRegionAccess(off, index, data.subarray(at, at + n)),
      [],
      opts,
    );
    closeAll(r.fds);
  });
}

/**
 * Messages of one access in flight at once. The server's max_data_xfer_size decides how many messages an access
 * takes: issued all together, a server saying 1 made a 1 MiB read a million requests built in one turn of the
 * event loop (and past 65,536 of them, EAGAIN). 64 keeps a 4 MiB access at 64 KiB transfers wholly pipelined.
 */
export const MAX_IN_FLIGHT = 64;

/** A count that is no positive integer is refused. */
function checkCount(count: number): void {
  if (!Number.isSafeInteger(count) || count <= 0) {
    throw Object.assign(new RangeError(`count ${count} must be a positive integer`), {
      code: 'ERR_DEVLEASE_INVALID_ARG',
    });
  }
}

/**
 * Runs `fn` on each message of an access ([offset, count] split at `maxTransfer`; `at`: its place in the access),
 * in order, with at most MAX_IN_FLIGHT running: each of that many lanes takes the next message when its last
 * one is answered. After a failure no lane starts another; the first failure is thrown.
 */
async function eachChunk(
  offset: bigint,
  count: number,
  maxTransfer: number,
  fn: (off: bigint, n: number, at: number) => Promise<void>,
): Promise<void> {
  const total = Math.ceil(count / maxTransfer);
  let next = 0;
  let failed = false;
  const lane = async (): Promise<void> => {
    while (!failed && next < total) {
      const at = next++ * maxTransfer;
      try {
        await fn(offset + BigInt(at), Math.min(maxTransfer, count - at), at);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(total, MAX_IN_FLIGHT) }, lane));
}
