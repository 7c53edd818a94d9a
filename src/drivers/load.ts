// Drivers of one's own: the config's `device.driver` names an ES module
// exporting a DriverFactory (docs/DRIVERS.md). It is imported at start and
// checked for the factory's shape before the broker trusts it, so a wrong
// file fails the start with the file and the problem named, not with a
// TypeError deep inside a boot.

import { existsSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { DevleaseError } from '../errors.js';
import type { DriverFactory } from './driver.js';

/** A driver module that cannot be used: `code` EINVAL (ENOENT when the file is missing), `path` the file. */
export class DriverModuleError extends DevleaseError {
  readonly path: string;
  constructor(code: 'ENOENT' | 'EINVAL', path: string, problem: string, cause?: unknown) {
    super(code, `driver module ${path}: ${problem}`, { reason: problem, cause });
    this.name = 'DriverModuleError';
    this.path = path;
  }
}

/** The factory's members a module must have; a miss is named in the error. */
function shapeProblem(f: unknown): string | null {
  if (typeof f !== 'object' || f === null) return `is ${f === null ? 'null' : typeof f}, not an object`;
  const o = f as Record<string, unknown>;
  if (typeof o.name !== 'string' || o.name === '') return 'has no "name" (a non-empty string)';
  if (typeof o.matches !== 'function') return 'has no matches(device) function';
  if (typeof o.create !== 'function') return 'has no create(device, config) function';
  return null;
}

/**
 * Import the module at `path` (absolute) and return its driver factory: the export `driverFactory`, or the
 * default export. Throws DriverModuleError naming the file and what is wrong.
 */
export async function loadDriverModule(path: string): Promise<DriverFactory> {
  if (!existsSync(path)) throw new DriverModuleError('ENOENT', path, 'no such file');
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(path).href)) as Record<string, unknown>;
  } catch (err) {
    throw new DriverModuleError('EINVAL', path, `cannot be imported: ${(err as Error).message}`, err);
  }
  const [which, factory] =
    mod.driverFactory !== undefined ? ['driverFactory', mod.driverFactory] : ['default', mod.default];
  if (factory === undefined) {
    throw new DriverModuleError(
      'EINVAL',
      path,
      'exports no driver factory (export `driverFactory` or a default export: { name, matches, create })',
    );
  }
  const problem = shapeProblem(factory);
  if (problem) throw new DriverModuleError('EINVAL', path, `its export "${which}" ${problem}`);
  return factory as DriverFactory;
}
