// Builds libdevlease (clients/c) with make for the tests, once per process, and runs its programs.
// DEVLEASE_CLIB_SANITIZE=1 builds and runs the AddressSanitizer + UBSan build instead (CI:
// npm run test:clib-sanitize). A missing compiler or json-c fails the test saying what to install.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = fileURLToPath(new URL('../../../', import.meta.url));
export const clibDir = join(root, 'clients', 'c');
export const sanitize = process.env['DEVLEASE_CLIB_SANITIZE'] === '1';
const out = join(clibDir, sanitize ? 'build-san' : 'build');

let built: string | null = null;

/** The folder of the built programs (clib-probe, clib-bench, minimal-copy). Throws naming what is missing. */
export function buildClib(): string {
  if (built) return built;
  for (const [tool, pkg] of [
    ['cc', 'gcc'],
    ['make', 'make'],
    ['pkg-config', 'pkg-config'],
  ] as const) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0)
      throw new Error(`libdevlease tests need '${tool}' (Debian: apt-get install ${pkg})`);
  }
  if (spawnSync('pkg-config', ['--exists', 'json-c']).status !== 0)
    throw new Error('libdevlease tests need json-c (Debian: apt-get install libjson-c-dev)');
  execFileSync('make', ['-s', '-C', clibDir, ...(sanitize ? ['SANITIZE=1'] : [])], { stdio: 'inherit' });
  built = join(out, 'bin');
  return built;
}

/** Sanitizer settings: any finding aborts the program with a report on stderr. */
export const sanitizerEnv = {
  ...process.env,
  ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=0:exitcode=86',
  UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1:exitcode=87',
};

export interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Run a built program to its end (asynchronously: the broker may live in this process). */
export function runProgram(name: string, args: string[], timeoutMs = 120_000): Promise<Run> {
  const child = spawn(join(buildClib(), name), args, { env: sanitizerEnv });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve) =>
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    }),
  );
}

/** No sanitizer report in a program's stderr. */
export function sanitizerFindings(stderr: string): string | null {
  return /AddressSanitizer|LeakSanitizer|runtime error:|UndefinedBehaviorSanitizer/.test(stderr)
    ? stderr
    : null;
}
