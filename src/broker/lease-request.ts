// The lease request a client sends in its VERSION capabilities
// (`devlease.request`), checked at the edge: everything past this point
// (policy, audit, driver) may rely on its types. A client controls every
// byte of it, so nothing here converts a value it has not checked — an
// object whose toString is not a function throws inside String().

import { VfioError } from '../errors.js';
import type { LeaseRequest } from './policy.js';

/** The most device-memory granules any request may name (the driver applies the configured limit). */
const MAX_GRANULES = 1 << 16;

/** What a JSON value is, in words, without converting it. */
export function describeJson(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v)}`;
  if (typeof v === 'number' || typeof v === 'boolean') return `${typeof v} ${JSON.stringify(v)}`;
  return typeof v;
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

const invalid = (field: string, problem: string) => new VfioError('EINVAL', `${field} ${problem}`);

/**
 * The lease request in `caps` (the client's VERSION capabilities) for a socket leasing `kind`.
 * Absent: a stock vfio-user client, leasing the socket's kind with defaults. Throws EINVAL naming the field.
 */
export function readLeaseRequest(caps: Record<string, unknown>, kind: string): LeaseRequest {
  const ext = caps['devlease'];
  if (ext === undefined) return { kind };
  if (!isObject(ext)) throw invalid('devlease', `must be a JSON object, got ${describeJson(ext)}`);
  const raw = ext['request'];
  if (raw === undefined) return { kind };
  if (!isObject(raw)) throw invalid('devlease.request', `must be a JSON object, got ${describeJson(raw)}`);
  if ('kind' in raw) {
    if (typeof raw['kind'] !== 'string') {
      throw invalid('devlease.request.kind', `must be a string, got ${describeJson(raw['kind'])}`);
    }
    if (raw['kind'] !== kind) {
      throw invalid('devlease.request.kind', `is ${describeJson(raw['kind'])}: this socket leases '${kind}'`);
    }
  }
  const granules = raw['devmemGranules'];
  if (
    granules !== undefined &&
    (typeof granules !== 'number' || !Number.isInteger(granules) || granules < 0 || granules > MAX_GRANULES)
  ) {
    throw invalid(
      'devlease.request.devmemGranules',
      `must be an integer from 0 to ${MAX_GRANULES}, got ${describeJson(granules)}`,
    );
  }
  // Other members are the policy module's to read (plain JSON values: they came from JSON.parse). `kind`
  // first: on Node 20 (V8 11.3) a literal that starts with a spread and adds a key gets a new hidden class
  // nearly every call (issue 16: docs/performance-history.md, twenty-fourth pass §4 and twenty-fifth pass §1).
  // Not Object.assign: it would set the copy's prototype from an own `__proto__` member of the JSON, where a
  // spread defines it as a plain member. `raw.kind`, if present, equals `kind` (checked above).
  return { kind, ...raw };
}
