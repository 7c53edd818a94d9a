// A real process whose threads keep a file in file tables of their own (unshare(CLONE_FILES)), for the /proc
// audit's tests (src/broker/audit-scan/file-tables.ts): python3, whose ctypes reaches unshare(2).
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

// argv: MODE OWN SHARED PATH. The file is PATH opened read-write, or fd 3 when PATH is '-'. OWN threads each
// unshare their file table: in mode 'keep' each keeps the copy of the fd unshare gave it; in mode 'receive' each
// closes that copy and receives the fd again over a socket (SCM_RIGHTS), into its own table. SHARED threads
// more share the main thread's table. Then the main thread closes its fd: only the own tables hold the file.
// Prints {"pid", "own": [[tid, fd], ...]} and waits to be killed; with a fifth argument 'exit-main' its main
// thread exits (pthread_exit) instead, and the other threads run on. PAD (the sixth argument, default 0): each
// own-table thread first opens that many more fds of /dev/null in its table (RLIMIT_NOFILE raised to its hard
// limit for them). DECOYS (the seventh argument, default 0) threads, made after the SHARED and before the OWN
// ones, unshare their table and close the file in it (tables without it), each with DECOY_PAD (the eighth)
// more fds of /dev/null. NOBODY_BUT (the ninth, default -1: off): that many threads are made first and stay
// root's, then the main thread alone becomes uid/gid 65534 (raw setresuid/setresgid: glibc's would change every
// thread) and dumpable again, so every thread made after is nobody's: a scanner of uid 65534 without
// CAP_SYS_PTRACE may kcmp those, not the first ones (EPERM). Then, with PATH a path, it reads commands on
// stdin: 'close' (each own thread closes its fd of the file) and 'open' (each opens PATH again), each answered
// with a line {"own": [[tid, fd], ...]} once done.
const SCRIPT = `
import ctypes, json, os, socket, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
mode, own, shared, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
exit_main = sys.argv[5] == 'exit-main'
pad = int(sys.argv[6])
decoys, decoy_pad = int(sys.argv[7]), int(sys.argv[8])
nobody_but = int(sys.argv[9])
if pad or decoy_pad:
    pad_max = max(pad, decoy_pad)
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < pad_max + 64:
        os.write(2, b'RLIMIT_NOFILE hard limit %d is under the %d fds this test needs\\n' % (hard, pad_max + 64))
        os._exit(1)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
fd = 3 if path == '-' else os.open(path, os.O_RDWR)
a, b = socket.socketpair()
stop = threading.Event()
ready = threading.Semaphore(0)
done = []
def unshare():
    if libc.unshare(0x400) != 0:  # CLONE_FILES
        os.write(2, b'unshare(CLONE_FILES): errno %d\\n' % ctypes.get_errno())
        os._exit(1)
def decoy_table():
    unshare()
    for _ in range(decoy_pad):
        os.open('/dev/null', os.O_RDONLY)
    os.close(fd)
    ready.release()
    stop.wait()
import queue
commands = []
def own_table():
    unshare()
    for _ in range(pad):
        os.open('/dev/null', os.O_RDONLY)
    kept = fd
    if mode == 'receive':
        os.close(fd)
        kept = socket.recv_fds(b, 1, 1)[1][0]
    me = [threading.get_native_id(), kept]
    done.append(me)
    q = queue.Queue()
    commands.append(q)
    ready.release()
    while True:
        cmd = q.get()
        if cmd == 'close':
            os.close(me[1])
        elif cmd == 'open':
            me[1] = os.open(path, os.O_RDWR)
        ready.release()
threading.stack_size(65536)
if nobody_but >= 0:
    for _ in range(nobody_but):
        threading.Thread(target=stop.wait, daemon=True).start()
    nr = {'x86_64': (117, 119), 'aarch64': (147, 149)}[os.uname().machine]  # setresuid, setresgid
    for n in (nr[1], nr[0]):
        if libc.syscall(n, 65534, 65534, 65534) != 0:
            os.write(2, b'setres[ug]id: errno %d\\n' % ctypes.get_errno())
            os._exit(1)
    libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: a change of uid cleared it
for _ in range(shared):
    threading.Thread(target=stop.wait, daemon=True).start()
for _ in range(decoys):
    threading.Thread(target=decoy_table, daemon=True).start()
    ready.acquire()
for _ in range(own):
    threading.Thread(target=own_table, daemon=True).start()
    if mode == 'receive':
        socket.send_fds(a, [b'x'], [fd])
    ready.acquire()
os.close(fd)
print(json.dumps({'pid': os.getpid(), 'own': done}), flush=True)
if exit_main:
    libc.pthread_exit(None)
if path == '-':
    stop.wait()
for line in sys.stdin:
    for q in commands:
        q.put(line.strip())
    for _ in commands:
        ready.acquire()
    print(json.dumps({'own': done}), flush=True)
stop.wait()
`;

export interface OwnTables {
  pid: number;
  /** Each own-table thread's id and the fd number of the file in its table. */
  own: { tid: number; fd: number }[];
  proc: ChildProcess;
  /** It exited and its pipes are closed. */
  exited: Promise<void>;
  /** Each own thread closes its fd of the file, or opens the file again (`own` then says its fd). */
  command(cmd: 'close' | 'open'): Promise<void>;
}

/**
 * Starts the process; resolves once its threads hold the file and its main thread has closed it. `file`: a
 * path, or an fd of this process given to the child as its fd 3. Kill it through `proc` (never by pid).
 */
export async function startOwnTables(opts: {
  mode: 'keep' | 'receive';
  own: number;
  shared?: number;
  file: string | number;
  exitMain?: boolean;
  /** More fds (of /dev/null) each own table holds. */
  padFds?: number;
  /** Threads with a table of their own without the file (made before the own ones), and their more fds. */
  decoys?: number;
  decoyPadFds?: number;
  /** The process becomes uid/gid 65534 but for this many threads made first (root's); see SCRIPT. */
  nobodyBut?: number;
}): Promise<OwnTables> {
  const path = typeof opts.file === 'string' ? opts.file : '-';
  const stdio: ('ignore' | 'pipe' | 'inherit' | number)[] = [
    path === '-' ? 'ignore' : 'pipe',
    'pipe',
    'inherit',
  ];
  if (typeof opts.file === 'number') stdio.push(opts.file);
  const proc = spawn(
    'python3',
    [
      '-c',
      SCRIPT,
      opts.mode,
      String(opts.own),
      String(opts.shared ?? 0),
      path,
      opts.exitMain ? 'exit-main' : '-',
      String(opts.padFds ?? 0),
      String(opts.decoys ?? 0),
      String(opts.decoyPadFds ?? 0),
      String(opts.nobodyBut ?? -1),
    ],
    {
      stdio,
    },
  );
  // 'close': exited, and its pipes closed (no fd of this process left for a leak check to find).
  const exited = new Promise<void>((r) => proc.once('close', () => r()));
  const waiting: ((line: string) => void)[] = [];
  const rl = createInterface({ input: proc.stdout! });
  rl.on('line', (l) => waiting.shift()?.(l));
  const line = await new Promise<string>((resolve, reject) => {
    const fail = (e: Error) => {
      clearTimeout(t);
      proc.kill('SIGKILL'); // not left waiting forever (a no-op once it has exited)
      reject(e);
    };
    const t = setTimeout(() => fail(new Error('python3 did not report within 30 s')), 30_000);
    proc.once('error', (e) => fail(new Error(`python3 is needed for this test: ${e.message}`)));
    proc.once('exit', (code) => fail(new Error(`python3 exited (${code}) before it reported`)));
    waiting.push((l) => {
      clearTimeout(t);
      resolve(l);
    });
  });
  const r = JSON.parse(line) as { pid: number; own: [number, number][] };
  const own = r.own.map(([tid, fd]) => ({ tid, fd }));
  const command = async (cmd: 'close' | 'open') => {
    if (path === '-') throw new Error("commands take the file as a path (it is opened again by 'open')");
    const answer = new Promise<string>((resolve) => waiting.push(resolve));
    proc.stdin!.write(`${cmd}\n`);
    const a = JSON.parse(await answer) as { own: [number, number][] };
    own.splice(0, own.length, ...a.own.map(([tid, fd]) => ({ tid, fd })));
  };
  return { pid: r.pid, own, proc, exited, command };
}
