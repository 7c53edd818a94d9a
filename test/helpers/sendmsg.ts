// Counts the sendmsg calls code in this process makes. On an AF_UNIX stream socket one recvmsg joins what several
// sends wrote (it stops only at a message carrying fds), so a read cannot tell "one sendmsg" from several: the
// calls themselves must be counted.
import { native } from '../../src/sys/native.js';

/** One native.sendmsg call. */
export interface SendCall {
  fd: number;
  bytes: number;
  fds: number;
}

/** Record every native.sendmsg call until the returned recorder is disposed (`using`) or restore()d. */
export function recordSendmsg() {
  const real = native.sendmsg;
  const calls: SendCall[] = [];
  native.sendmsg = (fd, data, fds) => {
    calls.push({ fd, bytes: data.byteLength, fds: fds.length });
    return real(fd, data, fds);
  };
  const restore = () => {
    native.sendmsg = real;
  };
  return {
    /** The calls on descriptor `fd` so far, in order. */
    on: (fd: number): SendCall[] => calls.filter((c) => c.fd === fd),
    /** The real sendmsg, for a test's own sends (not counted). */
    real,
    restore,
    [Symbol.dispose]: restore,
  };
}
