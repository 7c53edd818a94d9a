// The admin socket's checks of what a request carries (admin.ts): each
// refusal is a DevleaseError naming the field and why, thrown before anything
// is touched.

import { statSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { DevleaseError } from '../errors.js';
import type { PeerCred } from '../sys/index.js';
import { MAX_UPGRADE_DEADLINE_MS, type UpgradeOptions } from './handover/upgrade.js';

export type AdminRequest = { op?: unknown; [k: string]: unknown };

/** The request's JSON, which must be an object: `null` or `[]` once failed with a raw TypeError. */
export function parseRequest(data: Buffer): AdminRequest {
  let req: unknown;
  try {
    req = JSON.parse(data.toString('utf8'));
  } catch {
    throw new DevleaseError('EINVAL', 'request is not JSON');
  }
  if (req === null || typeof req !== 'object' || Array.isArray(req)) {
    const got = req === null ? 'null' : Array.isArray(req) ? 'an array' : typeof req;
    throw new DevleaseError('EINVAL', `a request is a JSON object such as {"op":"status"}, got ${got}`);
  }
  return req as AdminRequest;
}

/** drain's `on`: a boolean, or absent (on). A string "false" once turned draining on (it is truthy). */
export function drainOn(req: AdminRequest): boolean {
  if (req['on'] === undefined) return true;
  if (typeof req['on'] !== 'boolean')
    throw new DevleaseError('EINVAL', `drain: "on" must be true or false, got ${JSON.stringify(req['on'])}`);
  return req['on'];
}

/** Whether `uid` may name the code the broker runs: root, or the broker's own user (it could run it anyway). */
function mayNameCode(uid: number): boolean {
  return uid === 0 || uid === process.getuid?.();
}

/**
 * Refuses a binary or config file whose owner or mode lets someone other than root or the broker's user choose
 * what it says: the new broker runs the binary, and imports the modules the config names, as the broker's
 * user. (Its directories are not checked: docs/OPERATIONS.md says to keep them as the broker's own.)
 */
function checkCodeFile(field: 'binary' | 'config', path: string): void {
  if (!isAbsolute(path))
    throw new DevleaseError(
      'EINVAL',
      `upgrade: "${field}" must be an absolute path, got ${JSON.stringify(path)}`,
    );
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(path);
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'EINVAL';
    throw new DevleaseError(code, `upgrade: "${field}" ${path}: ${(err as Error).message}`);
  }
  if (!st.isFile()) throw new DevleaseError('EINVAL', `upgrade: "${field}" ${path} is not a regular file`);
  const broker = process.getuid?.() ?? 0;
  if (st.uid !== 0 && st.uid !== broker)
    throw new DevleaseError(
      'EPERM',
      `upgrade: "${field}" ${path} is owned by uid ${st.uid}, not root or the broker's user (uid ${broker}): its owner would choose the code the broker runs`,
    );
  if (st.mode & 0o022)
    throw new DevleaseError(
      'EPERM',
      `upgrade: "${field}" ${path} is group- or world-writable (mode 0${(st.mode & 0o777).toString(8)}): whoever may write it would choose the code the broker runs`,
    );
}

/**
 * An `upgrade` request's options, from a peer allowed on the admin socket. `binary` and `config` name code the
 * new broker runs as the broker's user: taken from root or that user only. An admin-group member (the docs'
 * example is sudo's group) would otherwise run code as the broker without sudo's password; it may upgrade to
 * the configured binary and config.
 */
export function upgradeOptions(req: AdminRequest, peer: PeerCred): UpgradeOptions {
  const opts: UpgradeOptions = { viaAdmin: true };
  for (const k of ['binary', 'config'] as const) {
    const v = req[k];
    if (v === undefined) continue;
    if (typeof v !== 'string' || v === '')
      throw new DevleaseError('EINVAL', `upgrade: "${k}" must be a path`);
    if (!mayNameCode(peer.uid))
      throw new DevleaseError(
        'EPERM',
        `upgrade: "${k}" is taken only from root or the broker's user (uid ${process.getuid?.()}), not uid ${peer.uid}: it names code the broker would run as itself; an admin-group member may upgrade to the configured binary and config only (leave "${k}" out)`,
      );
    checkCodeFile(k, v);
    opts[k] = v;
  }
  const d = req['deadlineMs'];
  if (d !== undefined) {
    if (typeof d !== 'number' || !Number.isInteger(d) || d < 1 || d > MAX_UPGRADE_DEADLINE_MS)
      throw new DevleaseError(
        'EINVAL',
        `upgrade: "deadlineMs" must be an integer from 1 to ${MAX_UPGRADE_DEADLINE_MS} (10 min), got ${JSON.stringify(d)}`,
      );
    opts.deadlineMs = d;
  }
  return opts;
}
