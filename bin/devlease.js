#!/usr/bin/env node
// Thin launcher: the CLI lives in dist/src/cli (compiled TypeScript).
import('../dist/src/cli/main.js')
  .then((m) => m.main(process.argv.slice(2)))
  .catch((err) => {
    process.stderr.write(`devlease: ${err?.stack ?? err}\n`);
    process.exit(1);
  });
