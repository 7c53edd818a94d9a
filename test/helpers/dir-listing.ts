// Counts the directory entries this process lists through node:fs while a body runs, whichever way it lists
// them (readdirSync, or a Dir's readSync: opendirSync), so that a test can bound what a listing costs: a bound
// read off a counter the code under test keeps itself passes when that code lists a whole directory and
// miscounts. Modules importing those functions by name see the wrappers too (module.syncBuiltinESMExports).
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';

/**
 * Runs `body`, counting the entries listed of directories whose path `match` accepts (all of each readdirSync
 * call's result, and each entry a Dir's readSync returns). `failAfter`: a Dir of such a path throws ENOENT once
 * it returned that many entries (a directory gone mid-listing, as a thread's fd/ when the thread exits).
 */
export function countingListings<T>(
  match: (path: string) => boolean,
  body: () => T,
  failAfter = Number.POSITIVE_INFINITY,
): { result: T; listed: number } {
  const readdir = fs.readdirSync;
  const readSync = fs.Dir.prototype.readSync;
  let listed = 0;
  const perDir = new WeakMap<fs.Dir, number>();
  fs.readdirSync = ((...args: unknown[]) => {
    const names = (readdir as (...a: unknown[]) => unknown[])(...args);
    if (match(String(args[0]))) listed += names.length;
    return names;
  }) as typeof fs.readdirSync;
  fs.Dir.prototype.readSync = function (this: fs.Dir) {
    if (!match(this.path)) return readSync.call(this);
    const n = perDir.get(this) ?? 0;
    if (n >= failAfter)
      throw Object.assign(new Error(`ENOENT: ${this.path} gone (test)`), { code: 'ENOENT' });
    const e = readSync.call(this);
    if (e !== null) {
      perDir.set(this, n + 1);
      listed++;
    }
    return e;
  };
  syncBuiltinESMExports();
  try {
    return { result: body(), listed };
  } finally {
    fs.readdirSync = readdir;
    fs.Dir.prototype.readSync = readSync;
    syncBuiltinESMExports();
  }
}
