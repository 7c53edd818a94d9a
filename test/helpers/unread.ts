// How far a reader has got: the bytes a socket's owner has not read yet. A test that must know the code under
// test has read what was sent (before it checks that nothing came of it, or that it waited) waits for 0, rather
// than sleeping a while and hoping.
import { native } from '../../src/sys/native.js';
import { until } from './broker-rig.js';

const FIONREAD = 0x541b;

/** Bytes waiting to be read on socket `fd` (FIONREAD). */
export function unreadBytes(fd: number): number {
  const count = new Int32Array(1);
  native.ioctl(fd, FIONREAD, new Uint8Array(count.buffer));
  return count[0] as number;
}

/** Resolves once the owner of socket `fd` has read everything sent to it so far; fails after `timeoutMs`. */
export function untilRead(fd: number, what: string, timeoutMs = 5000): Promise<void> {
  return until(`${what} to be read`, () => unreadBytes(fd) === 0, timeoutMs);
}
