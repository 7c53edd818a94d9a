// The start of a (/proc) file, read into a buffer the caller owns: open, reads, close. readFileSync adds an
// fstat, a read to find the end and a buffer of its own on every call (issue 16, sixth pass), and reads the
// whole file: a caller on the broker's one thread wants a bounded read of what it needs.
import { closeSync, openSync, readSync } from 'node:fs';

/**
 * Read `path` from its start into `buf`, until the file ends, `buf` is full, or `enough(n)` says the first `n`
 * bytes will do; returns how many bytes were read, or null when the file cannot be opened or read.
 */
export function readHead(
  path: string,
  buf: Buffer,
  enough: (n: number) => boolean = () => false,
): number | null {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return null;
  }
  try {
    let n = 0;
    for (;;) {
      const got = readSync(fd, buf, n, buf.length - n, null);
      n += got;
      if (got === 0 || n === buf.length || enough(n)) return n;
    }
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}
