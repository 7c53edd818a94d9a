// `devlease top`: a live, full-screen view of a broker through its admin socket (the "top" op), refreshed
// every --interval ms. On a terminal: the alternate screen, keys q (quit), s (next sort column), r (reverse).
// Not a terminal (a pipe, a log): plain text frames, one per interval, --iterations of them (default 1).
//
// Escape sequences come from ansi-escapes (small, maintained); keys from node:readline's keypress events.
// A full-screen library (blessed, terminal-kit, ink) would bring widgets and a renderer this one screen of
// text does not need — and blessed, the common one, is no longer maintained.
import { join } from 'node:path';
import { emitKeypressEvents } from 'node:readline';
import { parseArgs } from 'node:util';
import ansiEscapes from 'ansi-escapes';
import { adminFailure, adminRequest } from './admin.js';
import { intOption } from './int-option.js';
import { renderTop, SORT_KEYS, type SortKey, type TopSnap } from './top-view.js';

const USAGE = `usage: devlease top [--interval MS] [--iterations N] [--sort lease|pid|state|ops|bytes]
  --interval MS (100..3600000, default 1000) between refreshes; --sort the lease table's order (default lease)
  --admin PATH (default RUNDIR/DEVICE/admin.sock), --rundir DIR (default /run/devlease), --device NAME (default sa1)
  keys (on a terminal): q quit, s next sort column, r reverse; without a terminal it prints --iterations frames (default 1)`;

export async function topCommand(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        interval: { type: 'string' },
        iterations: { type: 'string' },
        sort: { type: 'string' },
        admin: { type: 'string' },
        rundir: { type: 'string' },
        device: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    process.stderr.write(`devlease top: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const str = (k: string) => (typeof values[k] === 'string' ? (values[k] as string) : undefined);
  const interval = intOption('--interval', str('interval') ?? '1000', 100, 3_600_000, 'ms');
  if (typeof interval === 'object') {
    process.stderr.write(`devlease top: ${interval.error}\n`);
    return 2;
  }
  const tty = process.stdout.isTTY === true && process.stdin.isTTY === true;
  const given = str('iterations');
  const iterations =
    given === undefined
      ? tty
        ? Number.POSITIVE_INFINITY
        : 1
      : intOption('--iterations', given, 1, 1_000_000_000);
  if (typeof iterations === 'object') {
    process.stderr.write(`devlease top: ${iterations.error}\n`);
    return 2;
  }
  let sort = (str('sort') ?? 'lease') as SortKey;
  if (!SORT_KEYS.includes(sort)) {
    process.stderr.write(`devlease top: --sort must be one of ${SORT_KEYS.join(', ')}, got '${sort}'\n`);
    return 2;
  }
  const path = str('admin') ?? join(str('rundir') ?? '/run/devlease', str('device') ?? 'sa1', 'admin.sock');
  const fetchSnap = async () => (await adminRequest(path, { op: 'top' }, 5000)) as TopSnap;

  let prev: TopSnap | null = null;
  let cur: TopSnap;
  try {
    cur = await fetchSnap();
  } catch (err) {
    process.stderr.write(`devlease top: ${adminFailure(path, err)}\n`);
    return 1;
  }
  if (!tty) return plain(fetchSnap, cur, sort, interval, iterations);

  let reversed = false;
  let stop: (code: number) => void = () => {};
  const done = new Promise<number>((resolve) => {
    stop = resolve;
  });
  const draw = () => {
    const { columns = 80, rows = 24 } = process.stdout;
    const lines = renderTop(prev, cur, sort, reversed, columns, rows);
    process.stdout.write(
      ansiEscapes.cursorTo(0, 0) +
        lines.map((l) => l + ansiEscapes.eraseEndLine).join('\n') +
        ansiEscapes.eraseDown,
    );
  };
  emitKeypressEvents(process.stdin);
  process.stdin.setRawMode(true);
  process.stdin.resume();
  const onKey = (_s: string, key: { name?: string; ctrl?: boolean }) => {
    if (key.name === 'q' || (key.ctrl && key.name === 'c')) stop(0);
    else if (key.name === 's') sort = SORT_KEYS[(SORT_KEYS.indexOf(sort) + 1) % SORT_KEYS.length]!;
    else if (key.name === 'r') reversed = !reversed;
    else return;
    draw();
  };
  process.stdin.on('keypress', onKey);
  process.stdout.on('resize', draw);
  process.stdout.write(ansiEscapes.enterAlternativeScreen + ansiEscapes.cursorHide + ansiEscapes.clearScreen);
  let error: string | null = null;
  let n = 1;
  draw();
  // One snapshot at a time: a tick while the last is still asked for is skipped. With a device that stopped
  // answering each snapshot takes the sample's 2 s deadline, and at a short --interval they piled up, each
  // leaving its device reads outstanding (on the device's one connection) until the device's own timeout.
  let fetching = false;
  const timer = setInterval(() => {
    if (fetching) return;
    fetching = true;
    fetchSnap().then(
      (s) => {
        fetching = false;
        prev = cur;
        cur = s;
        draw();
        if (++n >= iterations) stop(0);
      },
      (err: Error) => {
        fetching = false;
        error = err.message;
        stop(1);
      },
    );
  }, interval);
  const code = await done;
  clearInterval(timer);
  process.stdin.off('keypress', onKey);
  process.stdout.off('resize', draw);
  process.stdin.setRawMode(false);
  process.stdin.pause();
  process.stdout.write(ansiEscapes.cursorShow + ansiEscapes.exitAlternativeScreen);
  if (error) process.stderr.write(`devlease top: ${error}\n`);
  return code;
}

async function plain(
  fetchSnap: () => Promise<TopSnap>,
  first: TopSnap,
  sort: SortKey,
  interval: number,
  iterations: number,
): Promise<number> {
  let prev: TopSnap | null = null;
  let cur = first;
  for (let n = 1; ; n++) {
    process.stdout.write(`${renderTop(prev, cur, sort).join('\n')}\n`);
    if (n >= iterations) return 0;
    await new Promise((r) => setTimeout(r, interval));
    prev = cur;
    try {
      cur = await fetchSnap();
    } catch (err) {
      process.stderr.write(`devlease top: ${(err as Error).message}\n`);
      return 1;
    }
    process.stdout.write('\n');
  }
}
