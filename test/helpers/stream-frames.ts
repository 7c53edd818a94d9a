// A test framing for StreamSocket (u32 total size at offset 0 of an 8-byte
// header) and a collector of what a socket delivers, shared by the stream
// socket tests.
import type { StreamFraming, StreamMessage, StreamSocket } from '../../src/sys/index.js';

export const framing: StreamFraming = { headerSize: 8, messageSize: (h) => h.readUInt32LE(0) };

/** One framed message: the header (size, `tag`), then `body`. */
export function frame(body: Uint8Array | string, tag = 0): Buffer {
  const b = Buffer.from(body);
  const m = Buffer.alloc(8 + b.length);
  m.writeUInt32LE(m.length, 0);
  m.writeUInt32LE(tag, 4);
  b.copy(m, 8);
  return m;
}

export const body = (m: StreamMessage): string => m.data.subarray(8).toString();
export const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Collects messages and the error/close of a socket. */
export function collect(s: StreamSocket) {
  const got: StreamMessage[] = [];
  const errors: (Error & { code?: string })[] = [];
  s.on('message', (m: StreamMessage) => got.push(m));
  s.on('error', (e: Error) => errors.push(e));
  const closed = new Promise<void>((resolve) => s.once('close', () => resolve()));
  return { got, errors, closed };
}
