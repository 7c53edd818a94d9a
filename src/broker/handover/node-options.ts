// The Node options the old broker passes on to the new one in an upgrade:
// those on its command line (`process.execArgv`, between `node` and the
// script) and those in NODE_OPTIONS, which the new broker's environment
// carries. An operator who started the broker with, say,
// `--min-semi-space-size=16` (docs/OPERATIONS.md, "Node's heap for the
// broker") or `--require` of an agent expects the broker that replaces it to
// run the same way. Dropped, from both:
// - the inspector (`--inspect*`, `--debug-port`): the new broker would have no
//   debugger (its fixed port is the old one's) or one on a port nobody was
//   told (port 0), and with `--inspect-brk` / `--inspect-wait` on a port it
//   can take it would wait for a debugger past the upgrade's deadline;
// - watch mode (`--watch*`): it would make the new broker a supervisor that
//   restarts a child on file changes;
// - the modes that run something other than the script (`--test*`, `-e`,
//   `--eval`, `-p`, `--print`, `-pe`, `-c`, `--check`, `-i`, `--interactive`,
//   `--input-type`).
// Node reads `_` as `-` in an option's name (`--inspect_port`), and so does
// this. A value written apart (`--inspect-port 9230`) is the element after
// its option: Node refuses a separate value that starts with `-`, so an
// element that does not start with `-` belongs to the option before it and
// goes with it (a V8 flag's value written apart reaches V8 only when it starts
// with `-`, `--stack-trace-limit -1`, and such a pair is never dropped). An
// option written with `=` has its value already: a word after it is not its
// value, and is kept (in NODE_OPTIONS Node stops reading there; a word after
// a dropped option that takes no value is dropped with it, a malformed
// NODE_OPTIONS this does not try to mend).

const DROPPED = new Set([
  '--debug-port',
  '--watch',
  '--test',
  '-e',
  '--eval',
  '-p',
  '--print',
  '-pe',
  '-c',
  '--check',
  '-i',
  '--interactive',
  '--input-type',
]);
const DROPPED_PREFIXES = ['--inspect', '--watch-', '--test-'];

function dropped(arg: string): boolean {
  const eq = arg.indexOf('=');
  const name = (eq === -1 ? arg : arg.slice(0, eq)).replace(/_/g, '-');
  return DROPPED.has(name) || DROPPED_PREFIXES.some((p) => name.startsWith(p));
}

/** Options without the ones above, in order; every other option kept as it was written, with its value. */
export function inheritedNodeOptions(options: readonly string[]): string[] {
  const kept: string[] = [];
  let droppingValues = false;
  for (const arg of options) {
    if (!arg.startsWith('-')) {
      if (!droppingValues) kept.push(arg); // the value of the option before it
      continue;
    }
    const drop = dropped(arg);
    if (!drop) kept.push(arg);
    droppingValues = drop && !arg.includes('=');
  }
  return kept;
}

/**
 * NODE_OPTIONS as Node splits it: on spaces, except inside double quotes, where a backslash escapes the
 * next character. Throws on what Node itself refuses (an unterminated quote or escape).
 */
export function splitNodeOptions(value: string): string[] {
  const out: string[] = [];
  let quoted = false;
  let startNew = true;
  for (let i = 0; i < value.length; i++) {
    let c = value[i]!;
    if (c === '\\' && quoted) {
      if (i + 1 === value.length) throw new Error('NODE_OPTIONS ends in an escape');
      c = value[++i]!;
    } else if (c === ' ' && !quoted) {
      startNew = true;
      continue;
    } else if (c === '"') {
      quoted = !quoted;
      continue;
    }
    if (startNew) out.push(c);
    else out[out.length - 1] += c;
    startNew = false;
  }
  if (quoted) throw new Error('NODE_OPTIONS has an unterminated quote');
  return out;
}

/** Options joined back into a NODE_OPTIONS value that splitNodeOptions reads as `options`. */
export function joinNodeOptions(options: readonly string[]): string {
  return options.map((o) => (/[ "\\]/.test(o) ? `"${o.replace(/["\\]/g, (c) => `\\${c}`)}"` : o)).join(' ');
}

/**
 * The new broker's environment: this one's as it is now, with NODE_OPTIONS filtered as the command line is.
 * Filtered down to nothing it stays set, empty: unset, Node would read NODE_OPTIONS again from an
 * `--env-file` on the command line, unfiltered. A NODE_OPTIONS that Node could not have read (this process
 * would not have started) is passed on as it is.
 */
export function inheritedEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const value = env['NODE_OPTIONS'];
  if (value === undefined) return env;
  let options: string[];
  try {
    options = splitNodeOptions(value);
  } catch {
    return env;
  }
  return { ...env, NODE_OPTIONS: joinNodeOptions(inheritedNodeOptions(options)) };
}
