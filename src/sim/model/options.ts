// The simulator's start-up options (datasheet: everything marked
// *configurable*), their defaults and their allowed ranges. The CLI and the
// programmatic API both validate through here, so an error names the option
// and its range the same way everywhere.

export interface Sa1Options {
  /** NUM_QUEUES, 1..1024. */
  numQueues: number;
  /** QUEUE_STRIDE in bytes: a power of two, 4096..65536. */
  queueStride: number;
  /** DEVMEM_SIZE in bytes: a power of two of at least 1 MiB, and a multiple of the granule. */
  devmemSize: number;
  /** DEVMEM_GRANULE in bytes: a power of two, at least 64 KiB. */
  devmemGranule: number;
  /** Idle poll interval in µs (0 = always spin). */
  idlePollUs: number;
  /**
   * The poll interval, µs, of a device asleep with KICK_NEEDED set once it has handed out kick fds (datasheet
   * §2.3, §10): a client that never kicks is served within max(this, idlePollUs). Default KICK_ARMED_POLL_US.
   */
  armedPollUs: number;
}

export const DEFAULT_OPTIONS: Readonly<Sa1Options> = Object.freeze({
  numQueues: 64,
  queueStride: 65536,
  devmemSize: 64 * 1024 * 1024,
  devmemGranule: 1024 * 1024,
  idlePollUs: 50,
  armedPollUs: 10_000,
});

/** Largest device memory the simulator accepts (DEVMEM_SIZE_MB is 32-bit; 4 GiB keeps BAR4 sane). */
export const MAX_DEVMEM_SIZE = 4 * 1024 * 1024 * 1024;
/** DEVMEM_SIZE_MB's unit: device memory is a whole number of MiB. */
const DEVMEM_SIZE_UNIT = 1024 * 1024;
export const MAX_IDLE_POLL_US = 1_000_000;
/**
 * The default armed poll interval (armedPollUs): the idle poll interval of a device that has handed out kick
 * fds (GET_REGION_IO_FDS) and sleeps with KICK_NEEDED set (datasheet §2.3, §10; docs/SA-1.md "Doorbell
 * notification"): a client that never kicks is served within this (or the idle poll interval, if longer).
 * 10 ms: ~100 wake-ups a second, so an idle lease costs the host well under 1 % of a core.
 */
export const KICK_ARMED_POLL_US = DEFAULT_OPTIONS.armedPollUs;

/** A bad option: `option` is the option's name (CLI spelling given by the caller). */
export class OptionError extends RangeError {
  readonly option: string;
  constructor(option: string, message: string) {
    super(message);
    this.name = 'OptionError';
    this.option = option;
  }
}

function isPow2(n: number): boolean {
  if (!Number.isSafeInteger(n) || n <= 0) return false;
  while (n % 2 === 0) n /= 2;
  return n === 1;
}

/** Names used in messages; the CLI passes its flag spellings. */
export interface OptionNames {
  numQueues: string;
  queueStride: string;
  devmemSize: string;
  devmemGranule: string;
  idlePollUs: string;
  armedPollUs: string;
}
const API_NAMES: OptionNames = {
  numQueues: 'numQueues',
  queueStride: 'queueStride',
  devmemSize: 'devmemSize',
  devmemGranule: 'devmemGranule',
  idlePollUs: 'idlePollUs',
  armedPollUs: 'armedPollUs',
};

/** Fill defaults and check every range; throws OptionError naming the option and what is allowed. */
export function resolveOptions(
  partial: Partial<Sa1Options> = {},
  names: OptionNames = API_NAMES,
): Sa1Options {
  // The device's options only: the rest of a startSimulator() argument (socket path, log function) is no
  // option, and the options are cloned into the device worker.
  const given = stripUndefined(partial) as Partial<Sa1Options>;
  const o: Sa1Options = { ...DEFAULT_OPTIONS };
  for (const k of Object.keys(DEFAULT_OPTIONS) as (keyof Sa1Options)[])
    if (k in given) o[k] = given[k] as number;
  const int = (v: number): boolean => Number.isSafeInteger(v);
  if (!int(o.numQueues) || o.numQueues < 1 || o.numQueues > 1024) {
    throw new OptionError(
      names.numQueues,
      `${names.numQueues} must be an integer from 1 to 1024, got ${o.numQueues}`,
    );
  }
  if (!isPow2(o.queueStride) || o.queueStride < 4096 || o.queueStride > 65536) {
    throw new OptionError(
      names.queueStride,
      `${names.queueStride} must be a power of two from 4096 to 65536 bytes, got ${o.queueStride}`,
    );
  }
  if (!isPow2(o.devmemGranule) || o.devmemGranule < 65536) {
    throw new OptionError(
      names.devmemGranule,
      `${names.devmemGranule} must be a power of two of at least 65536 bytes, got ${o.devmemGranule}`,
    );
  }
  if (!isPow2(o.devmemSize) || o.devmemSize > MAX_DEVMEM_SIZE || o.devmemSize < o.devmemGranule) {
    throw new OptionError(
      names.devmemSize,
      `${names.devmemSize} must be a power of two, a multiple of the granule (${o.devmemGranule} bytes) ` +
        `and at most ${MAX_DEVMEM_SIZE} bytes, got ${o.devmemSize}`,
    );
  }
  // DEVMEM_SIZE_MB (§2.1) reports the size in whole MiB: a power of two below 1 MiB would read 0 there (one
  // at or above it is a whole number of MiB).
  if (o.devmemSize < DEVMEM_SIZE_UNIT) {
    throw new OptionError(
      names.devmemSize,
      `${names.devmemSize} must be a whole number of MiB, at least ${DEVMEM_SIZE_UNIT} bytes ` +
        `(DEVMEM_SIZE_MB reports it in MiB), got ${o.devmemSize}`,
    );
  }
  if (!int(o.idlePollUs) || o.idlePollUs < 0 || o.idlePollUs > MAX_IDLE_POLL_US) {
    throw new OptionError(
      names.idlePollUs,
      `${names.idlePollUs} must be an integer from 0 to ${MAX_IDLE_POLL_US} µs, got ${o.idlePollUs}`,
    );
  }
  if (!int(o.armedPollUs) || o.armedPollUs < 0 || o.armedPollUs > MAX_IDLE_POLL_US) {
    throw new OptionError(
      names.armedPollUs,
      `${names.armedPollUs} must be an integer from 0 to ${MAX_IDLE_POLL_US} µs, got ${o.armedPollUs}`,
    );
  }
  return o;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** BAR2's size: NUM_QUEUES × QUEUE_STRIDE rounded up to a power of two. */
export function bar2Size(o: Sa1Options): number {
  let size = 1;
  while (size < o.numQueues * o.queueStride) size *= 2;
  return size;
}
