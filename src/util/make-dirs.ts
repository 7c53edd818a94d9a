// mkdir -p that ends. Not mkdirSync's recursive option: Node's walk steps back to the parent on every ENOENT
// and forward on its EEXIST, so under /proc (which answers ENOENT for a folder it cannot make under a parent
// that exists) it spun at 100% CPU forever. Here each level is tried once: after its parent was made, ENOENT
// is final. Throws the failing mkdir's error (code: ENOENT, EACCES, ENOTDIR, ...).

import { mkdirSync, statSync } from 'node:fs';
import { dirname } from 'node:path';

export function makeDirs(dir: string, mode = 0o777): void {
  try {
    mkdirSync(dir, { mode });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') {
      if (!statSync(dir).isDirectory())
        throw Object.assign(new Error(`${dir} is not a folder`), { code: 'ENOTDIR' });
      return;
    }
    const parent = dirname(dir);
    if (code !== 'ENOENT' || parent === dir) throw err;
    makeDirs(parent, mode);
    try {
      mkdirSync(dir, { mode });
    } catch (e) {
      // Made meanwhile by another (two daemons starting at once): as good as made here, if it is a folder.
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || !statSync(dir).isDirectory()) throw e;
    }
  }
}
