// Kernel constants users of src/sys need, read from the addon (which takes
// them from the C headers).
import { native } from './native.js';

const c = native.constants as Readonly<Record<string, number>>;

function constant(name: string): number {
  const value = c[name];
  if (value === undefined) throw new Error(`devlease addon does not export constant ${name}; rebuild it`);
  return value;
}

export const IN_OPEN = constant('IN_OPEN');
export const IN_CLOSE_WRITE = constant('IN_CLOSE_WRITE');
export const IN_CLOSE_NOWRITE = constant('IN_CLOSE_NOWRITE');
export const IN_CLOSE = constant('IN_CLOSE');
export const IN_IGNORED = constant('IN_IGNORED');
export const IN_Q_OVERFLOW = constant('IN_Q_OVERFLOW');

export const F_SEAL_SEAL = constant('F_SEAL_SEAL');
export const F_SEAL_SHRINK = constant('F_SEAL_SHRINK');
export const F_SEAL_GROW = constant('F_SEAL_GROW');
export const F_SEAL_WRITE = constant('F_SEAL_WRITE');
export const F_SEAL_FUTURE_WRITE = constant('F_SEAL_FUTURE_WRITE');

export const PAGE_SIZE = constant('PAGE_SIZE');

/** The addon's constant table (errno values, O_* flags, signals, ...). */
export const sysConstants = c;
export { constant as sysConstant };
