// The C header of SA-1 numbers (clients/c/include/devlease_sa1_regs.h) against the TypeScript one
// (src/hw/sa1/datasheet.ts): every numeric constant there must exist in C as SA1_<name> with the same
// value. The check compiles a C program that prints each one, so it sees what a C compiler sees.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import * as D from '../../src/hw/sa1/datasheet.js';
import { buildClib, clibDir } from './build.js';

test('every SA-1 constant of src/hw/sa1/datasheet.ts has the same value in devlease_sa1_regs.h', () => {
  buildClib(); // checks the compiler is there, names what is missing
  const numeric = Object.entries(D).filter((e): e is [string, number] => typeof e[1] === 'number');
  assert.ok(numeric.length > 100, 'the datasheet module exports its numbers');
  const cName = (n: string) => (n.startsWith('SA1_') ? n : `SA1_${n}`);
  const lines = numeric.map(
    ([n]) =>
      `#ifdef ${cName(n)}\n  printf("${n}=%llu\\n", (unsigned long long)(${cName(n)}));\n#else\n  printf("${n}=MISSING\\n");\n#endif`,
  );
  const dir = mkdtempSync(join(tmpdir(), 'devlease-clib-consts-'));
  try {
    writeFileSync(
      join(dir, 'c.c'),
      `#include <stdio.h>\n#include "devlease_sa1_regs.h"\nint main(void) {\n${lines.join('\n')}\n  return 0;\n}\n`,
    );
    execFileSync('cc', [
      '-std=c11',
      '-Wall',
      '-Werror',
      '-I',
      join(clibDir, 'include'),
      '-o',
      join(dir, 'c'),
      join(dir, 'c.c'),
    ]);
    const got = new Map(
      execFileSync(join(dir, 'c'), { encoding: 'utf8' })
        .trim()
        .split('\n')
        .map((l) => l.split('=') as [string, string]),
    );
    const wrong = numeric
      .filter(([n, v]) => got.get(n) !== String(v))
      .map(([n, v]) => `${cName(n)}: TypeScript ${v}, C ${got.get(n)}`);
    assert.deepEqual(
      wrong,
      [],
      'C and TypeScript disagree: regenerate the header with node scripts/gen-sa1-c-header.mjs',
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
