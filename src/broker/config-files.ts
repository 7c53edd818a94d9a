// The files a configuration names that the broker reads or writes later, checked when the daemon starts, so
// that a typo stops the start (exit 2, naming the key) instead of surfacing long after it:
// - audit.path is opened at the first record and a failure is only logged (audit.ts: a record must never
//   fail a grant), so an audit log that cannot be written was lost for the daemon's whole life, silently;
// - sa1.firmware is read only when the device is not already running firmware, so a wrong path went
//   unnoticed until the first recovery, which then failed every attempt.
// Nothing is created or changed here: a start that fails later leaves no empty audit file behind.

import { accessSync, constants, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { type BrokerConfig, ConfigError } from './config.js';

const code = (err: unknown): string => (err as NodeJS.ErrnoException).code ?? String(err);

/** Throws a ConfigError naming the key when a file the config names cannot be used as the broker will. */
export function checkConfigFiles(config: BrokerConfig): void {
  if (config.auditLog) checkAuditPath(config.auditLog);
  if (config.sa1.firmware) checkReadableFile('sa1.firmware', config.sa1.firmware);
}

function checkAuditPath(path: string): void {
  const fail = (problem: string) => new ConfigError('audit.path', problem);
  let isDir: boolean;
  try {
    isDir = statSync(path).isDirectory();
  } catch (err) {
    if (code(err) !== 'ENOENT') throw fail(`cannot use ${path}: ${code(err)}`);
    // A new file: created in its directory at the first record.
    const dir = dirname(path);
    try {
      if (!statSync(dir).isDirectory()) throw Object.assign(new Error(), { code: 'ENOTDIR' });
      accessSync(dir, constants.W_OK | constants.X_OK);
    } catch (e) {
      throw fail(`cannot create ${path}: its directory ${dir}: ${code(e)}`);
    }
    return;
  }
  if (isDir) throw fail(`${path} is a directory, not a file to append to`);
  try {
    accessSync(path, constants.W_OK);
  } catch (err) {
    throw fail(`cannot append to ${path}: ${code(err)}`);
  }
}

function checkReadableFile(key: string, path: string): void {
  try {
    if (!statSync(path).isFile()) throw Object.assign(new Error(), { code: 'not a regular file' });
    accessSync(path, constants.R_OK);
  } catch (err) {
    throw new ConfigError(key, `cannot read ${path}: ${code(err)}`);
  }
}
