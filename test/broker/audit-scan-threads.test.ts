// The /proc audit of direct slices (src/broker/audit-scan) against a process whose main thread has exited
// while its other threads run on (pthread_exit in main, a pattern of C clients): /proc/<pid> is then a zombie
// thread whose maps and fd/ read empty, though the process maps the slice and may hold the fd. Real processes
// (python3, whose ctypes reaches pthread_exit) map a real memfd standing in for the VFIO device file.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';
import { AuditLog } from '../../src/broker/audit.js';
import { SliceAuditor } from '../../src/broker/audit-scan/auditor.js';
import { type FileIdentity, identityOfFd, scanProc } from '../../src/broker/audit-scan/proc-scan.js';
import { isRunning, processFacts } from '../../src/broker/audit-scan/process-facts.js';
import { native } from '../../src/sys/native.js';
import { trackFdLeaks } from '../helpers/fds.js';

const PAGE = 4096;
let memfd = -1;
let target: FileIdentity;
const children: ChildProcess[] = [];

let leakCheck: () => Promise<void> = async () => {};
before(() => {
  leakCheck = trackFdLeaks();
  memfd = native.memfdCreate('devlease-audit-threads', 0);
  native.ftruncate(memfd, 16 * PAGE);
  target = identityOfFd(memfd);
});
after(() => {
  for (const c of children) c.kill('SIGKILL');
  native.close(memfd);
  return leakCheck();
});

// Maps one page of fd 3 at OFFSET, closes fd 3 unless --keep-fd, starts a thread that sleeps, prints its pid
// and ends its main thread: the process lives on in the other thread.
// (libc's mmap through ctypes: Python's mmap module keeps a dup of the fd.)
const SCRIPT = [
  'import ctypes, os, sys, threading, time',
  'libc = ctypes.CDLL(None, use_errno=True)',
  'libc.mmap.restype = ctypes.c_void_p',
  'libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]',
  'p = libc.mmap(None, 4096, 3, 1, 3, int(sys.argv[1]))  # PROT_READ|PROT_WRITE, MAP_SHARED',
  'if p in (None, ctypes.c_void_p(-1).value): sys.exit("mmap: errno %d" % ctypes.get_errno())',
  'ctypes.c_char.from_address(p).value = b"Z"',
  "if '--keep-fd' not in sys.argv: os.close(3)",
  'threading.Thread(target=lambda: [time.sleep(60) for _ in iter(int, 1)]).start()',
  'print(os.getpid(), flush=True)',
  'libc.pthread_exit(None)',
].join('\n');

interface LeaderGone {
  pid: number;
  proc: ChildProcess;
  exited: Promise<void>;
}

async function startLeaderGone(offset: number, flags: string[] = []): Promise<LeaderGone> {
  const proc = spawn('python3', ['-c', SCRIPT, String(offset), ...flags], {
    stdio: ['ignore', 'pipe', 'inherit', memfd],
  });
  children.push(proc);
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const pid = await new Promise<number>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('python3 did not report its pid within 30 s')), 30_000);
    proc.once('error', (e) => reject(new Error(`python3 is needed for this test: ${e.message}`)));
    createInterface({ input: proc.stdout! }).once('line', (l) => {
      clearTimeout(t);
      resolve(Number(l));
    });
  });
  // The main thread's exit follows the print: wait until /proc says it is a zombie (its maps read empty).
  for (const end = Date.now() + 10_000; readFileSync(`/proc/${pid}/maps`, 'latin1') !== ''; ) {
    if (Date.now() > end) throw new Error(`pid ${pid}: the main thread did not exit within 10 s`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return { pid, proc, exited };
}

test('scan: a process whose main thread exited is still seen mapping the file and holding its fd', async () => {
  const p = await startLeaderGone(2 * PAGE, ['--keep-fd']);
  try {
    assert.ok(
      isRunning(p.pid),
      'a process with a live thread is running, though its main thread is a zombie',
    );
    const r = scanProc(target, new Set([process.pid]));
    assert.deepEqual(
      r.maps.filter((m) => m.pid === p.pid).map((m) => m.offset),
      [BigInt(2 * PAGE)],
      'its mapping of page 2',
    );
    assert.ok(
      r.fds.some((f) => f.pid === p.pid),
      `its fd of the file: ${JSON.stringify(r.fds)}`,
    );
    assert.match(
      processFacts(p.pid).exe ?? 'null',
      /python3/,
      'a violation record would name its executable',
    );
  } finally {
    p.proc.kill('SIGKILL');
    await p.exited;
  }
  assert.equal(isRunning(p.pid), false, 'gone once killed');
});

test('release: a slice mapped by a holder whose main thread exited is not free; the revoke deadline kills it', async () => {
  const audit = new AuditLog(null);
  const a = new SliceAuditor(
    target,
    { action: 'report', periodMs: 60_000, handoffGraceMs: 0, deadlineAction: 'kill' },
    { audit, revoke: () => {}, log: () => {} },
  );
  const p = await startLeaderGone(0);
  try {
    a.add('l1', p.pid, [{ start: 0n, end: BigInt(PAGE) }]);
    a.onRequest('l1', true);
    let freed = false;
    const released = a.whenUnmapped('l1', { forced: false, pollMs: 20 }).then(() => {
      freed = true;
    });
    // Scans run meanwhile (every 20 ms): the slice must stay out of the pool while the process maps it.
    const scans = a.stats.scans;
    while (!freed && a.stats.scans < scans + 5) await new Promise((r) => setTimeout(r, 20));
    assert.equal(freed, false, 'the slice was freed while a live process still maps it');
    assert.equal(a.stats.violations, 0, `its own slice: no violation: ${JSON.stringify(audit.recent)}`);
    a.killMappers('l1');
    await p.exited;
    assert.equal(p.proc.signalCode, 'SIGKILL');
    await released;
  } finally {
    a.close();
    p.proc.kill('SIGKILL');
  }
});
