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
// more fds of /dev/null.
const SCRIPT = `
import ctypes, json, os, socket, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
mode, own, shared, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
exit_main = sys.argv[5] == 'exit-main'
pad = int(sys.argv[6])
decoys, decoy_pad = int(sys.argv[7]), int(sys.argv[8])
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
def own_table():
    unshare()
    for _ in range(pad):
        os.open('/dev/null', os.O_RDONLY)
    kept = fd
    if mode == 'receive':
        os.close(fd)
        kept = socket.recv_fds(b, 1, 1)[1][0]
    done.append([threading.get_native_id(), kept])
    ready.release()
    stop.wait()
threading.stack_size(65536)
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
stop.wait()
`;

export interface OwnTables {
  pid: number;
  /** Each own-table thread's id and the fd number of the file in its table. */
  own: { tid: number; fd: number }[];
  proc: ChildProcess;
  exited: Promise<void>;
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
}): Promise<OwnTables> {
  const path = typeof opts.file === 'string' ? opts.file : '-';
  const stdio: ('ignore' | 'pipe' | 'inherit' | number)[] = ['ignore', 'pipe', 'inherit'];
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
    ],
    {
      stdio,
    },
  );
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const line = await new Promise<string>((resolve, reject) => {
    const fail = (e: Error) => {
      clearTimeout(t);
      proc.kill('SIGKILL'); // not left waiting forever (a no-op once it has exited)
      reject(e);
    };
    const t = setTimeout(() => fail(new Error('python3 did not report within 30 s')), 30_000);
    proc.once('error', (e) => fail(new Error(`python3 is needed for this test: ${e.message}`)));
    proc.once('exit', (code) => fail(new Error(`python3 exited (${code}) before it reported`)));
    createInterface({ input: proc.stdout! }).once('line', (l) => {
      clearTimeout(t);
      resolve(l);
    });
  });
  const r = JSON.parse(line) as { pid: number; own: [number, number][] };
  return { pid: r.pid, own: r.own.map(([tid, fd]) => ({ tid, fd })), proc, exited };
}
