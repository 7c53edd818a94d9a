// The broker's own socket files and their folder, RUNDIR/<device.name>/<kind>.sock:
// - sun_path holds 107 bytes and a NUL: a long rundir failed only at bind(), with an ENAMETOOLONG naming
//   neither path nor key, after the folders were made; checked first;
// - sockets.group and admin.group: giving a socket to a group (chown) takes root, or an owner who is a member
//   of it. A chown that fails fails the start naming the key, and the caller closes the socket it made: one
//   left listening kept the daemon's event loop alive, so a failed start hung instead of exiting.

import { chownSync } from 'node:fs';
import { join } from 'node:path';
import { makeDirs } from '../util/make-dirs.js';
import { ConfigError } from './config.js';

const code = (err: unknown): string => (err as NodeJS.ErrnoException).code ?? String(err);

/** mkdir -p of the sockets' folder (make-dirs.ts: one that ends under /proc too), naming rundir when it fails. */
export function makeSocketDir(dir: string, mode: number): void {
  try {
    makeDirs(dir, mode);
  } catch (err) {
    throw new ConfigError('rundir', `cannot make ${dir}: ${code(err)}`);
  }
}

/** The longest socket path bind() takes: sizeof(sun_path) less its terminating NUL. */
export const MAX_SOCKET_PATH = 107;

/** Throws a ConfigError naming rundir if the socket of one of `kinds` in `dir` is too long a path. */
export function checkSocketPaths(dir: string, kinds: string[]): void {
  for (const path of kinds.map((k) => join(dir, `${k}.sock`))) {
    const n = Buffer.byteLength(path);
    if (n > MAX_SOCKET_PATH)
      throw new ConfigError(
        'rundir',
        `the socket ${path} would be ${n} bytes, longer than a unix socket path may be (${MAX_SOCKET_PATH}): choose a shorter rundir (or device.name)`,
      );
  }
}

export function giveToGroup(path: string, gid: number, key: 'sockets.group' | 'admin.group'): void {
  try {
    chownSync(path, -1, gid);
  } catch (err) {
    const why =
      code(err) === 'EPERM'
        ? ' (only root, or an owner who is a member of that group, may give a file to it)'
        : '';
    throw new ConfigError(key, `cannot give ${path} to gid ${gid}: ${code(err)}${why}`);
  }
}
