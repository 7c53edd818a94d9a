// What the /proc audit of direct slices (src/broker/audit-scan) costs the broker, whatever other processes do.
// A process with a huge maps file: any process can map a file thousands of times under a path thousands of
// bytes long (tens of MB of maps text here; 65530 mappings of a deeper path make it GBs). The scan must find
// every mapping of the audited file in it, be fooled by none of the path's text, and cost the broker a fixed
// amount of memory, not the file's size. And releases in a burst: one scan, not one each. Real processes
// (python3, libc's mmap through ctypes; the mapper fixture) map a real memfd standing in for the device.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';
import { AuditLog } from '../../src/broker/audit.js';
import { SliceAuditor } from '../../src/broker/audit-scan/auditor.js';
import {
  type FileIdentity,
  identityOfFd,
  mappingsInFile,
  mapsDev,
  scanProc,
} from '../../src/broker/audit-scan/proc-scan.js';
import { native } from '../../src/sys/native.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { closeMappers, startMapper } from '../helpers/mapper.js';

const PAGE = 4096;
let memfd = -1;
let dir = '';
let target: FileIdentity;
const children: ChildProcess[] = [];

let leakCheck: () => Promise<void> = async () => {};
before(() => {
  leakCheck = trackFdLeaks();
  memfd = native.memfdCreate('devlease-audit-big', 0);
  native.ftruncate(memfd, 16 * PAGE);
  target = identityOfFd(memfd);
  dir = mkdtempSync(join(tmpdir(), 'devlease-audit-big-'));
});
after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await closeMappers();
  native.close(memfd);
  rmSync(dir, { recursive: true, force: true });
  await leakCheck();
});

// argv: DIR NEEDLE BIG EVERY. Makes a file under DIR at a path of some 3,800 bytes, one of whose components
// holds NEEDLE (the " dev inode " text a maps line of the audited file has); maps it BIG times, and page 2 of
// fd 3 (the memfd) once every EVERY of those, then prints how many of the latter and sleeps.
const SCRIPT = [
  'import ctypes, os, sys, time',
  'libc = ctypes.CDLL(None, use_errno=True)',
  'libc.mmap.restype = ctypes.c_void_p',
  'libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]',
  'def mmap(fd, off):',
  '    p = libc.mmap(None, 4096, 1, 1, fd, off)  # PROT_READ, MAP_SHARED',
  '    if p in (None, ctypes.c_void_p(-1).value): sys.exit("mmap: errno %d" % ctypes.get_errno())',
  'd, needle, big, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])',
  'd = os.path.join(d, "n" + needle + "n")',
  'while len(d) < 3800: d = os.path.join(d, "x" * 200)',
  'os.makedirs(d)',
  'f = os.path.join(d, "f")',
  'open(f, "wb").write(b"\\0" * 4096)',
  'fd = os.open(f, os.O_RDONLY)',
  'n = 0',
  'for i in range(big):',
  '    mmap(fd, 0)',
  '    if i % every == 0: mmap(3, 2 * 4096); n += 1',
  'print(n, flush=True)',
  'time.sleep(600)',
].join('\n');

test('scan: a process with a huge maps file costs the broker a fixed buffer, and each of its mappings is found', async () => {
  const needle = ` ${mapsDev(target.dev)} ${target.ino} `;
  const proc = spawn('python3', ['-c', SCRIPT, dir, needle, '20000', '97'], {
    stdio: ['ignore', 'pipe', 'inherit', memfd],
  });
  children.push(proc);
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  try {
    const mapped = await new Promise<number>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('python3 did not map within 60 s')), 60_000);
      proc.once('error', (e) => reject(new Error(`python3 is needed for this test: ${e.message}`)));
      proc.once('exit', (code) => reject(new Error(`python3 exited (${code}) before it had mapped`)));
      createInterface({ input: proc.stdout! }).once('line', (l) => {
        clearTimeout(t);
        resolve(Number(l));
      });
    });
    assert.equal(mapped, 207, 'mapped the memfd 207 times among 20,000 mappings of the long path');
    // Its maps text is some 80 MB (20,207 lines, most of them 3,900 bytes long).
    const rssBefore = process.resourceUsage().maxRSS; // KiB, the high-water mark
    const r = scanProc(target, new Set([process.pid]));
    const grewMiB = (process.resourceUsage().maxRSS - rssBefore) / 1024;
    const mine = r.maps.filter((m) => m.pid === proc.pid);
    assert.equal(
      mine.length,
      207,
      'every mapping of the memfd, and none of the path that has its dev:inode text',
    );
    assert.ok(
      mine.every((m) => m.offset === BigInt(2 * PAGE) && m.end - m.start === BigInt(PAGE)),
      'each one page, at page 2',
    );
    assert.ok(
      grewMiB < 40,
      `the scan took ${grewMiB.toFixed(0)} MiB more memory: it read the maps file whole`,
    );
  } finally {
    proc.kill('SIGKILL');
    await exited;
  }
});

test('maps lines: one across a read boundary is found, and record-like text in a path longer than a read is no mapping', () => {
  const dev = mapsDev(target.dev);
  const rec = (start: number, off: number, d = dev, i = String(target.ino)) =>
    `${start.toString(16)}-${(start + PAGE).toString(16)} r--s ${off.toString(16).padStart(8, '0')} ${d} ${i}`;
  const READ = 64 * 1024; // the reader's buffer
  let text = `${rec(0x10000, 0)}                    /memfd:a (deleted)\n`;
  // A line of another file longer than a read, whose path holds records of the memfd, one of them at the
  // very start of the second read (where a reader that took a read's start for a line's start would see it).
  const other = `${rec(0x20000, 0, '08:01', '99')}   /`;
  let path = '';
  while (text.length + other.length + path.length < READ) path += 'p';
  path += `${rec(0x30000, 0x3000)} `;
  while (path.length < 150_000) path += `q ${rec(0x40000, 0x4000)} `;
  text += `${other}${path}\n`;
  // A memfd line that starts 20 bytes before the end of a read and ends in the next.
  const straddling = `${rec(0x50000, 0x5000)}                    /memfd:a (deleted)\n`;
  const boundary = Math.ceil(text.length / READ) * READ + READ;
  text += `${'f'.repeat(boundary - 20 - text.length - 1)}\n${straddling}`;
  text += `${rec(0x60000, 0x6000)}   /memfd:a (deleted)`; // the last line, with no newline
  const file = join(dir, 'maps');
  writeFileSync(file, text, 'latin1');
  const found = mappingsInFile(file, 1, target).map((m) => [m.start, m.offset]);
  assert.deepEqual(found, [
    [0x10000n, 0n],
    [0x50000n, 0x5000n],
    [0x60000n, 0x6000n],
  ]);
});

test('release: leases ending together are decided by one scan, not one each on the event loop', async () => {
  const audit = new AuditLog(null);
  const a = new SliceAuditor(
    target,
    { action: 'report', periodMs: 60_000, handoffGraceMs: 0, deadlineAction: 'kill' },
    { audit, revoke: () => {}, log: () => {} },
  );
  const holders = await Promise.all(
    [0, 1, 2, 3].map(async (page) => {
      const m = await startMapper(`/proc/${process.pid}/fd/${memfd}`, page * PAGE, PAGE);
      return { proc: m.proc, exited: m.exited, page };
    }),
  );
  try {
    for (const h of holders) {
      a.add(`l${h.page}`, h.proc.pid!, [{ start: BigInt(h.page * PAGE), end: BigInt((h.page + 1) * PAGE) }]);
      a.onRequest(`l${h.page}`, true);
    }
    for (const h of holders) h.proc.kill('SIGKILL');
    await Promise.all(holders.map((h) => h.exited));
    // The four leases end together (their clients died): each waits for its slice's release.
    const scans = a.stats.scans;
    await Promise.all(holders.map((h) => a.whenUnmapped(`l${h.page}`, { forced: false, pollMs: 60_000 })));
    assert.equal(a.stats.scans - scans, 1, 'one scan released the four slices');
    assert.equal(a.stats.violations, 0);
  } finally {
    a.close();
  }
});
