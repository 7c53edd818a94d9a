// The Node options (`process.execArgv`: what came between `node` and the
// script) the old broker passes on to the new one in an upgrade. An operator
// who started the broker with, say, `--min-semi-space-size=16`
// (docs/OPERATIONS.md, "Node's heap for the broker") or `--require` of an
// agent expects the broker that replaces it to run the same way. Dropped are
// the options that tie a process to something the old one holds or that
// would change what the new process is:
// - the inspector (`--inspect*`, `--debug-port`): its port is the old
//   broker's, and `--inspect-brk` / `--inspect-wait` would stop the new one
//   until a debugger attached, past the upgrade's deadline;
// - watch mode (`--watch*`): it would make the new broker a supervisor that
//   restarts a child on file changes;
// - the modes that run something other than the script (`--test*`, `-e`,
//   `--eval`, `-p`, `--print`, `-c`, `--check`, `-i`, `--interactive`,
//   `--input-type`).
// Options that come from NODE_OPTIONS are not in execArgv: the new broker
// inherits the environment, and with it those.

/** Dropped options that take a value, which may be the next element (`--inspect-port 9230`). */
const DROPPED_WITH_VALUE = new Set([
  '--inspect-port',
  '--debug-port',
  '--inspect-publish-uid',
  '--watch-path',
  '--test-name-pattern',
  '--test-skip-pattern',
  '--test-reporter',
  '--test-reporter-destination',
  '--test-concurrency',
  '--test-timeout',
  '--test-shard',
  '--test-coverage-include',
  '--test-coverage-exclude',
  '-e',
  '--eval',
  '-p',
  '--print',
  '--input-type',
]);

/** Dropped options that take no value (or only one written with `=`). */
const DROPPED_FLAGS = new Set(['-c', '--check', '-i', '--interactive', '--test', '--watch']);
const DROPPED_PREFIXES = ['--inspect', '--watch-', '--test-'];

function dropped(name: string): boolean {
  return (
    DROPPED_WITH_VALUE.has(name) ||
    DROPPED_FLAGS.has(name) ||
    DROPPED_PREFIXES.some((p) => name.startsWith(p))
  );
}

/** `execArgv` without the options above, in order; every other option kept as it was written. */
export function inheritedNodeOptions(execArgv: readonly string[]): string[] {
  const kept: string[] = [];
  for (let i = 0; i < execArgv.length; i++) {
    const arg = execArgv[i]!;
    const eq = arg.indexOf('=');
    const name = eq === -1 ? arg : arg.slice(0, eq);
    if (!dropped(name)) {
      kept.push(arg);
      continue;
    }
    // `--inspect-port 9230`: its value is the next element, dropped with it (`--inspect-port=9230` is one).
    if (eq === -1 && DROPPED_WITH_VALUE.has(name) && i + 1 < execArgv.length) i++;
  }
  return kept;
}
