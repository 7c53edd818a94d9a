// `devlease sim`: serve the SA-1 simulated accelerator on a vfio-user socket
// until SIGINT/SIGTERM. With --control-stdin, fault injection requests are
// read from stdin as JSON lines and answered on stdout (see docs/SA-1.md).

import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import type { InjectRequest } from '../sim/host/commands.js';
import { bigintReviver } from '../sim/host/control-json.js';
import { resolveMaxDmaMaps } from '../sim/host/dma-limit.js';
import { OptionError, type OptionNames, resolveOptions, type Sa1Options } from '../sim/model/options.js';

const USAGE = `usage: devlease sim --socket PATH [--queues N] [--stride BYTES] [--devmem MIB] [--granule BYTES]
                    [--idle-poll-us N] [--armed-poll-us N] [--max-dma-maps N] [--control-stdin]
  --queues N          NUM_QUEUES, 1..1024 (default 64)
  --stride BYTES      QUEUE_STRIDE, a power of two from 4096 to 65536 (default 65536)
  --devmem MIB        DEVMEM_SIZE in MiB, a power of two, a multiple of the granule, at most 4096 (default 64)
  --granule BYTES     DEVMEM_GRANULE, a power of two of at least 65536 (default 1048576)
  --idle-poll-us N    idle poll interval in µs, 0..1000000, 0 = always spin (default 50)
  --armed-poll-us N   poll interval in µs while asleep waiting for a kick (once kick fds are handed out),
                      0..1000000, never below --idle-poll-us (default 10000; a client that never kicks
                      waits up to this long after an idle spell: docs/SA-1.md, "Doorbell notification")
  --max-dma-maps N    max_dma_maps advertised and held, 1..room left in the guard table (default: all of it;
                      3904 with the other defaults; docs/SA-1.md, "IOMMU")
  --control-stdin     accept fault-injection requests as JSON lines on stdin`;

const CLI_NAMES: OptionNames = {
  numQueues: '--queues',
  queueStride: '--stride',
  devmemSize: '--devmem',
  devmemGranule: '--granule',
  idlePollUs: '--idle-poll-us',
  armedPollUs: '--armed-poll-us',
};

class UsageError extends Error {}

/**
 * V8's tier-up budget for the simulator's process (bytecode run between two looks at whether a function is
 * hot enough to optimize; V8's default is 67584). The device worker runs its descriptor path once per
 * doorbell: with a client doing one operation every 10 ms that is ~300 runs a second, which the default never
 * got optimized (`--trace-opt` of the idle bench: Engine.turn, the completion writer and the queue page's
 * publish stayed in the baseline tier, step() deoptimized at the first NOP), so the first operation after idle
 * ran them unoptimized, and cold (issue 16: kicked first NOP 12–27 µs faster with it, alternating A/B). Only this
 * process is changed: a program embedding the simulator keeps its own settings.
 */
const TIER_UP_BUDGET = 1000;

function integer(flag: string, v: string | undefined, range: string): number | undefined {
  if (v === undefined) return undefined;
  // Safe integers only: a longer run of digits was read rounded, and the error quoted that (1e+20), not `v`.
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v)))
    throw new UsageError(`${flag} must be ${range}, got '${v}'`);
  return Number(v);
}

interface SimArgs {
  socket: string;
  options: Sa1Options;
  maxDmaMaps: number;
  controlStdin: boolean;
}

function parse(argv: string[]): SimArgs {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        socket: { type: 'string' },
        queues: { type: 'string' },
        stride: { type: 'string' },
        devmem: { type: 'string' },
        granule: { type: 'string' },
        'idle-poll-us': { type: 'string' },
        'armed-poll-us': { type: 'string' },
        'max-dma-maps': { type: 'string' },
        'control-stdin': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values.help) throw new UsageError('');
  const socket = values.socket as string | undefined;
  if (!socket) throw new UsageError('--socket PATH is required');
  const devmemMib = integer(
    '--devmem',
    values.devmem as string | undefined,
    'a power of two number of MiB from 1 to 4096',
  );
  if (devmemMib !== undefined && (devmemMib < 1 || devmemMib > 4096 || (devmemMib & (devmemMib - 1)) !== 0)) {
    throw new UsageError(`--devmem must be a power of two number of MiB from 1 to 4096, got ${devmemMib}`);
  }
  try {
    const options = resolveOptions(
      {
        numQueues: integer('--queues', values.queues as string | undefined, 'an integer from 1 to 1024'),
        queueStride: integer(
          '--stride',
          values.stride as string | undefined,
          'a power of two from 4096 to 65536',
        ),
        devmemSize: devmemMib === undefined ? undefined : devmemMib * 1024 * 1024,
        devmemGranule: integer(
          '--granule',
          values.granule as string | undefined,
          'a power of two of at least 65536',
        ),
        idlePollUs: integer(
          '--idle-poll-us',
          values['idle-poll-us'] as string | undefined,
          'an integer from 0 to 1000000',
        ),
        armedPollUs: integer(
          '--armed-poll-us',
          values['armed-poll-us'] as string | undefined,
          'an integer from 0 to 1000000',
        ),
      },
      CLI_NAMES,
    );
    const maxDmaMaps = resolveMaxDmaMaps(
      options,
      integer('--max-dma-maps', values['max-dma-maps'] as string | undefined, 'a positive integer'),
      '--max-dma-maps',
    );
    return { socket, options, maxDmaMaps, controlStdin: values['control-stdin'] === true };
  } catch (err) {
    if (err instanceof OptionError) throw new UsageError(err.message);
    throw err;
  }
}

export async function simCommand(argv: string[]): Promise<number> {
  let args: ReturnType<typeof parse>;
  try {
    args = parse(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    // --help: usage on stdout, exit 0; a usage error: the reason and usage on stderr, exit 2.
    if (!err.message) {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    process.stderr.write(`devlease sim: ${err.message}\n${USAGE}\n`);
    return 2;
  }
  setFlagsFromString(`--interrupt-budget=${TIER_UP_BUDGET}`); // before the device worker's code first runs
  const { startSimulator } = await import('../sim/index.js');
  let sim: Awaited<ReturnType<typeof startSimulator>>;
  try {
    sim = await startSimulator({ socketPath: args.socket, ...args.options, maxDmaMaps: args.maxDmaMaps });
  } catch (err) {
    process.stderr.write(`devlease sim: cannot serve on ${args.socket}: ${(err as Error).message}\n`);
    return 1;
  }
  const o = sim.options;
  process.stdout.write(
    `ready socket=${sim.socketPath} queues=${o.numQueues} stride=${o.queueStride} ` +
      `devmem-mib=${o.devmemSize / 1048576} granule=${o.devmemGranule} idle-poll-us=${o.idlePollUs} ` +
      `armed-poll-us=${o.armedPollUs} max-dma-maps=${sim.maxDmaMaps} pid=${process.pid}\n`,
  );

  const control = args.controlStdin ? createInterface({ input: process.stdin, terminal: false }) : null;
  // One request at a time, answered in order (stats and injections wait for the device).
  let turn = Promise.resolve();
  control?.on('line', (line) => {
    if (!line.trim()) return;
    turn = turn.then(async () => {
      let reply: Record<string, unknown>;
      try {
        const req = JSON.parse(line, bigintReviver) as InjectRequest | { kind: 'stats' } | { kind: 'owner' };
        if (req.kind === 'stats') reply = { ok: true, stats: await sim.stats() };
        else if (req.kind === 'owner') reply = { ok: true, ...sim.owner() };
        else {
          await sim.inject(req);
          reply = { ok: true };
        }
      } catch (err) {
        reply = { ok: false, error: (err as Error).message };
      }
      process.stdout.write(`${JSON.stringify(reply)}\n`);
    });
  });

  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });
  control?.close();
  process.stdin.destroy();
  await sim.close();
  process.stderr.write(`devlease sim: stopped on ${signal}\n`);
  return 0;
}
