// An audit file that takes only part of a record (a file-size limit here, RLIMIT_FSIZE set with `ulimit -S -f`;
// a full disk does the same): the next record used to be appended onto the fragment, so neither parsed. Now
// every record after it starts a line of its own, in this broker and in the next one to open the file.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, chownSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, test } from 'node:test';
import { AuditLog } from '../../src/broker/audit.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
const dir = mkdtempSync(join(tmpdir(), 'devlease-audit-torn-'));
after(async () => {
  rmSync(dir, { recursive: true, force: true });
  await leakCheck();
});

// The child writes 3 records under a 512-byte limit (the first fits, the second is cut short, the third finds
// the file full: EFBIG each, SIGXFSZ being ignored by Node), says so, waits for the limit to be lifted, and
// writes 3 more with the same AuditLog.
const child = `
const { AuditLog } = await import(process.env.AUDIT_MODULE);
const a = new AuditLog(process.env.AUDIT_FILE);
const pad = 'x'.repeat(300);
for (let i = 0; i < 3; i++) a.write({ event: 'grant', lease: 'before-' + i, pad });
console.log(JSON.stringify({ errors: a.writeErrors }));
process.stdin.once('data', () => {
  for (let i = 0; i < 3; i++) a.write({ event: 'grant', lease: 'after-' + i, pad });
  a.close();
  a.close(); // idempotent
  console.log(JSON.stringify({ errors: a.writeErrors }));
  process.stdin.destroy();
});
`;

function lines(file: string): { records: Record<string, unknown>[]; fragments: string[] } {
  const records: Record<string, unknown>[] = [];
  const fragments: string[] = [];
  for (const l of readFileSync(file, 'utf8').split('\n').slice(0, -1)) {
    try {
      records.push(JSON.parse(l));
    } catch {
      fragments.push(l);
    }
  }
  return { records, fragments };
}

test('a record the file took only part of leaves a fragment line; the records after it are whole lines', async () => {
  const file = join(dir, 'audit.jsonl');
  const proc = spawn(
    'sh',
    ['-c', 'ulimit -S -f 1 && exec "$0" --input-type=module -e "$1"', process.execPath, child],
    {
      env: {
        ...process.env,
        AUDIT_MODULE: new URL('../../src/broker/audit.js', import.meta.url).href,
        AUDIT_FILE: file,
      },
      stdio: ['pipe', 'pipe', 'inherit'],
    },
  );
  const out = createInterface({ input: proc.stdout! })[Symbol.asyncIterator]();
  try {
    assert.deepEqual(JSON.parse((await out.next()).value), { errors: 2 });
    const lift = spawnSync('prlimit', [`--pid=${proc.pid}`, '--fsize=unlimited:'], { encoding: 'utf8' });
    assert.equal(lift.status, 0, `prlimit: ${lift.stderr}`);
    proc.stdin!.write('go\n');
    assert.deepEqual(JSON.parse((await out.next()).value), { errors: 2 }, 'the limit is lifted');
    await once(proc, 'exit');
  } finally {
    proc.kill();
  }
  let { records, fragments } = lines(file);
  assert.deepEqual(
    records.map((r) => r.lease),
    ['before-0', 'after-0', 'after-1', 'after-2'],
  );
  assert.equal(fragments.length, 1, 'the cut record is a line of its own');
  assert.match(fragments[0]!, /^\{"time":"[^"]+","event":"grant","lease":"before-1","pad":"x+$/);

  // A file that ends in a fragment when it is opened (its writer stopped mid-record): a new line first.
  const torn = join(dir, 'torn.jsonl');
  spawnSync('sh', ['-c', `printf '{"event":"gra' > ${torn}`]);
  const a = new AuditLog(torn);
  a.write({ event: 'start' });
  a.close();
  ({ records, fragments } = lines(torn));
  assert.deepEqual(
    records.map((r) => r.event),
    ['start'],
  );
  assert.deepEqual(fragments, ['{"event":"gra']);
});

test('reopen() (at every reload) writes to the path anew after a rotation renamed the file', () => {
  const file = join(dir, 'rotated.jsonl');
  const a = new AuditLog(file);
  a.write({ event: 'one' });
  renameSync(file, `${file}.1`);
  a.write({ event: 'two' }); // still the open file, now named .1
  a.reopen();
  a.write({ event: 'three' });
  a.close();
  a.write({ event: 'four' }); // after close: opened for this record alone
  assert.deepEqual(
    lines(`${file}.1`).records.map((r) => r.event),
    ['one', 'two'],
  );
  assert.deepEqual(
    lines(file).records.map((r) => r.event),
    ['three', 'four'],
  );
});

// The broker may append to its audit file without reading it (mode 0220 or 0200, an append-only policy): the log's
// own fd is opened write-only, as appendFileSync opened it, and the torn-line check reads through an open of its
// own or not at all. Opened read-write, every record failed with EACCES. (As another uid: root reads anything.)
test('a file the broker may write but not read takes every record', () => {
  const shared = mkdtempSync(join(tmpdir(), 'devlease-audit-wo-'));
  try {
    const file = join(shared, 'audit.jsonl');
    writeFileSync(file, '');
    chmodSync(shared, 0o777);
    chownSync(file, 65534, 65534);
    chmodSync(file, 0o200);
    const script = `
const { AuditLog } = await import(process.env.AUDIT_MODULE);
const a = new AuditLog(process.env.AUDIT_FILE);
for (let i = 0; i < 2; i++) a.write({ event: 'grant', lease: 'wo-' + i });
a.close();
console.log(JSON.stringify({ errors: a.writeErrors }));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      uid: 65534,
      gid: 65534,
      encoding: 'utf8',
      env: {
        ...process.env,
        AUDIT_MODULE: new URL('../../src/broker/audit.js', import.meta.url).href,
        AUDIT_FILE: file,
      },
    });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout.trim()), { errors: 0 }, 'no record refused');
    assert.deepEqual(
      lines(file).records.map((x) => x['lease']),
      ['wo-0', 'wo-1'],
    );
  } finally {
    rmSync(shared, { recursive: true, force: true });
  }
});
