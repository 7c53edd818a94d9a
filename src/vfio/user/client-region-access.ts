// The vfio-user client's region access (REGION_READ, REGION_WRITE): an access larger than the
// negotiated transfer size is split into messages issued together (pipelined, each with its own
// deadline and reply), while a register read stays one message, built and checked in place. Kept
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
  const parts = await Promise.all(
    chunks(BigInt(offset), count, maxTransfer).map(([off, n]) => readOne(c, index, off, n, opts)),
  );
  return Buffer.concat(parts);
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
  const base = BigInt(offset);
  await Promise.all(
    chunks(base, data.byteLength, maxTransfer).map(async ([off, n]) => {
      const at = Number(off - base);
      const r = await c.request(
        P.VFIO_USER_REGION_WRITE,
        encodeRegionAccess(off, index, data.subarray(at, at + n)),
        [],
        opts,
      );
      closeAll(r.fds);
    }),
  );
}

/** [offset, count] of each message of an access; a count that is no positive integer is refused. */
function chunks(offset: bigint, count: number, maxTransfer: number): [bigint, number][] {
  if (!Number.isSafeInteger(count) || count <= 0) {
    throw Object.assign(new RangeError(`count ${count} must be a positive integer`), {
      code: 'ERR_DEVLEASE_INVALID_ARG',
    });
  }
  const out: [bigint, number][] = [];
  for (let done = 0; done < count; done += maxTransfer) {
    out.push([offset + BigInt(done), Math.min(maxTransfer, count - done)]);
  }
  return out;
}
