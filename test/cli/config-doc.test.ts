// docs/CONFIG.md's table of keys against the parser (src/broker/config.ts): every key the parser reads is
// listed, every listed key is one the parser reads (a wrong value is refused naming it, not as an unknown key),
// every documented default is what the daemon uses when the key is left out, and both ends of every integer
// range are accepted and the values just past them refused.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { parse } from 'smol-toml';
import { ConfigError, configFromObject, parseBytes } from '../../src/broker/config.js';

const doc = readFileSync('docs/CONFIG.md', 'utf8');
const section = doc.slice(doc.indexOf('## Keys, defaults and ranges'));
const rows = [...section.matchAll(/^\| `([a-z_.[\]0-9]+)` +\| (.*?) +\| (.*?) +\|$/gm)].map((m) => ({
  key: m[1]!,
  dflt: m[2]!,
  accepted: m[3]!,
}));

/** The config document with `key` (dotted; policy.rule[].k in a rule of its own) set to `value`. */
function withKey(key: string, value: unknown): Record<string, unknown> {
  const rule = /^policy\.rule\[\]\.(\w+)$/.exec(key)?.[1];
  if (rule) {
    const base: Record<string, unknown> = ['uid', 'gid', 'any'].includes(rule) ? {} : { any: true };
    return { policy: { rule: [{ ...base, [rule]: value }] } };
  }
  const parts = key.split('.');
  return parts.length === 1 ? { [key]: value } : { [parts[0]!]: { [parts[1]!]: value } };
}

/** The field a refusal names, for `key`. */
const field = (key: string) => key.replace('rule[]', 'rule[0]');

function refusedNaming(key: string, value: unknown): void {
  assert.throws(
    () => configFromObject(withKey(key, value)),
    (err: unknown) =>
      err instanceof ConfigError && err.field === field(key) && !/unknown key/.test(err.message),
    `${key} = ${String(value)} is refused, naming ${field(key)}`,
  );
}

/** A documented number: an integer, 0o777, or a byte size ("1TiB"). */
function num(text: string): number {
  const n = Number(text);
  if (Number.isSafeInteger(n)) return n;
  const b = parseBytes(text);
  assert.ok(b !== null, `a number: ${text}`);
  return Number(b);
}

test('the table lists every key the parser reads', () => {
  assert.ok(rows.length > 40, `the table was found (${rows.length} rows)`);
  const src = readFileSync('src/broker/config.ts', 'utf8');
  const read = new Set(
    [...src.matchAll(/\.(?:string|bool|int|bytes|raw)\('(\w+)'|groupId\(\w+, '(\w+)'\)/g)].map(
      (m) => m[1] ?? m[2],
    ),
  );
  read.delete('rule'); // [[policy.rule]]: its keys are listed as policy.rule[].*
  const listed = new Set(rows.map((r) => r.key.split('.').at(-1)));
  for (const k of read) assert.ok(listed.has(k), `key ${k} is in docs/CONFIG.md's table`);
});

test('every listed key is read: a value of the wrong type is refused naming it', () => {
  for (const { key } of rows) refusedNaming(key, [[]]);
});

test("every documented default is the daemon's own (a file that sets it changes nothing)", () => {
  const defaults = configFromObject({});
  for (const { key, dflt } of rows) {
    if (!dflt || dflt.startsWith('none') || key.startsWith('policy.rule[]')) continue;
    const value = (parse(`v = ${dflt}`) as { v: unknown }).v;
    assert.deepEqual(configFromObject(withKey(key, value)), defaults, `${key} = ${dflt} is the default`);
  }
});

test("every integer range's ends are accepted, and the values just past them refused", () => {
  let ranges = 0;
  for (const { key, accepted } of rows) {
    const m = /(?:^|[ ,])(\w+)\.\.(\w+)(?:,|$| )/.exec(accepted);
    if (!m) continue;
    ranges++;
    const [lo, hi] = [num(m[1]!), num(m[2]!)];
    refusedNaming(key, lo - 1);
    refusedNaming(key, hi + 1);
    if (/at (least|most)/.test(accepted)) continue; // bounded by another key's value too
    for (const v of [lo, hi]) assert.doesNotThrow(() => configFromObject(withKey(key, v)), `${key} = ${v}`);
  }
  assert.ok(ranges > 30, `ranges checked: ${ranges}`);
});
