// The mailbox's shared memory (mailbox.ts): its Int32 words, a ring of
// fixed request slots, and a reply area. A slot holds one post: its op
// number (0: the request is on the port), its seq (0: one-way) and number,
// up to five numeric fields (f64, or u64 over the same words for bigints)
// and SLOT_BYTES of inline bytes; a SlotCodec (command-slots.ts) says
// which request is which op and fields.

/** Int32 words before the ring (named below). */
export const WORDS = 16;
/** Slots in the ring: posts the device has not taken yet, at most (a sleeping device takes DMA maps late). */
export const SLOTS = 256;
/** A slot: 16 f64 words: op, seq, n, five numeric fields, then SLOT_BYTES of inline bytes. */
const SLOT_F64 = 16;
const S_OP = 0;
const S_SEQ = 1;
const S_N = 2;
const S_FIELDS = 3;
const S_BYTES_F64 = 8;
/** Inline bytes per slot (a register write's data). */
export const SLOT_BYTES = (SLOT_F64 - S_BYTES_F64) * 8;
/** Reply bytes held in shared memory (a longer reply, or any other value, goes on the port). */
export const REPLY_BYTES = 256;

const RING_AT = WORDS * 4;
export const REPLY_AT = RING_AT + SLOTS * SLOT_F64 * 8;
export const MEMORY_BYTES = REPLY_AT + REPLY_BYTES;

/** The first field of post `n`'s slot (what `at` means below). Posts wrap at 2^32, a multiple of SLOTS. */
export const slotAt = (n: number): number => ((n >>> 0) % SLOTS) * SLOT_F64 + S_FIELDS;

/** Typed views over the ring (one set per thread). */
export class SlotViews {
  readonly f64: Float64Array;
  readonly u64: BigUint64Array;
  readonly #u8: Uint8Array;

  constructor(sab: SharedArrayBuffer) {
    this.f64 = new Float64Array(sab, RING_AT, SLOTS * SLOT_F64);
    this.u64 = new BigUint64Array(sab, RING_AT, SLOTS * SLOT_F64);
    this.#u8 = new Uint8Array(sab, RING_AT, SLOTS * SLOT_F64 * 8);
  }

  /** The slot's inline bytes (SLOT_BYTES of them). */
  bytes(at: number): Uint8Array {
    const from = (at - S_FIELDS + S_BYTES_F64) * 8;
    return this.#u8.subarray(from, from + SLOT_BYTES);
  }

  /** Caller: the slot holds post `n`, request `seq` (0: one-way), as op `op` (0: on the port). */
  label(at: number, op: number, seq: number, n: number): void {
    const f = this.f64;
    f[at - S_FIELDS + S_OP] = op;
    f[at - S_FIELDS + S_SEQ] = seq;
    f[at - S_FIELDS + S_N] = n;
  }

  op(at: number): number {
    return this.f64[at - S_FIELDS + S_OP]!;
  }

  seq(at: number): number {
    return this.f64[at - S_FIELDS + S_SEQ]!;
  }

  n(at: number): number {
    return this.f64[at - S_FIELDS + S_N]!;
  }
}

/**
 * How requests of type R sit in a slot. encode returns the op number (> 0) after writing the fields at `at`,
 * or 0 when the request must go on the port; decode makes the request back from them.
 */
export interface SlotCodec<R> {
  encode(req: R, slots: SlotViews, at: number): number;
  decode(op: number, slots: SlotViews, at: number): R;
}

// The Int32 words, by index: what the caller (mailbox.ts) and the device (mailbox-device.ts) share.
export const W_REQUEST = 0; // number of the last post (request or one-way) written to the ring
export const W_ANSWERED = 1; // sequence number of the last request answered
/** Non-zero while the device sleeps in waitSet() (so a request must also write the wake eventfd). */
export const W_FD_SLEEP = 2;
/** The device's wake eventfd (a process-wide fd number). */
export const W_WAKE_FD = 3;
/** Count of posts (requests and one-way) the device has taken and acted on. */
export const W_TAKEN = 4;
/** Engine epoch: odd while the device is inside a round (its pending check included). */
export const W_EPOCH = 5;
/** Non-zero while the front end waits on W_EPOCH (so the device notifies when it moves). */
export const W_EPOCH_WAITER = 6;
/** Non-zero once the front end handed out the queues' kick fds (GET_REGION_IO_FDS). */
export const W_KICKS_OUT = 7;
/** Number of the last post the device copied out of the ring: slots up to it may be written again. */
export const W_SEEN = 8;
/** The reply to request W_ANSWERED: its seq, its kind (R_*), its byte count. */
export const W_REPLY_SEQ = 9;
export const W_REPLY_KIND = 10;
export const W_REPLY_LEN = 11;
/** Non-zero while the caller waits for a free slot (so the device notifies W_SEEN as it takes posts). */
export const W_SLOT_WAITER = 12;

export const R_NOTHING = 0;
export const R_BYTES = 1;
export const R_PORT = 2;
