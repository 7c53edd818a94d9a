// Sockets handed over by systemd's socket activation (sd_listen_fds(3)):
// LISTEN_PID names this process, LISTEN_FDS how many descriptors start at
// fd 3, LISTEN_FDNAMES their names (FileDescriptorName=), colon-separated.
//
// Each descriptor is checked to be a listening AF_UNIX socket, and its type
// and path read from /proc/net/unix (matched by inode) — no getsockopt
// needed — so a socket unit of the wrong type (a stream socket where the
// admin SEQPACKET one belongs) is refused naming it, not discovered at the
// first accept. The descriptors are moved to close-on-exec numbers (systemd
// passes them inheritable) and made non-blocking (accept loops until EAGAIN).
import { readFileSync } from 'node:fs';
import { Fd } from './fd.js';
import { native } from './native.js';

const SD_LISTEN_FDS_START = 3;
const S_IFMT = 0o170000;
const S_IFSOCK = 0o140000;

export interface ListenSocket {
  /** FileDescriptorName= of its socket unit ('unknown' when systemd gave none). */
  name: string;
  fd: Fd;
  type: 'stream' | 'seqpacket' | 'dgram';
  /** The bound path ('' for an abstract or unnamed socket). */
  path: string;
}

/** An error in what systemd passed: names the variable or descriptor. */
export function listenFdsError(message: string): Error & { code: string } {
  return Object.assign(new Error(`socket activation: ${message}`), { code: 'EINVAL' });
}

const TYPES: Record<number, ListenSocket['type']> = { 1: 'stream', 2: 'dgram', 5: 'seqpacket' };

/** Type, listening state and path of the AF_UNIX socket with this inode, from /proc/net/unix. */
function unixSocketInfo(
  ino: bigint,
): { type: ListenSocket['type'] | null; listening: boolean; path: string } | null {
  // Num RefCount Protocol Flags Type St Inode Path
  for (const line of readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 7 || f[6] !== ino.toString()) continue;
    const flags = Number.parseInt(f[3]!, 16);
    return {
      type: TYPES[Number.parseInt(f[4]!, 16)] ?? null,
      listening: (flags & 0x10000) !== 0, // __SO_ACCEPTCON
      path: f[7] ?? '',
    };
  }
  return null;
}

/**
 * Takes the sockets systemd passed, or returns [] when none were passed to this process (no LISTEN_PID, or
 * another process's). Unsets the three variables so that children do not take them too. Throws (closing
 * everything it took) when the variables are malformed or a descriptor is not a listening AF_UNIX socket.
 */
export function takeListenFds(env: NodeJS.ProcessEnv = process.env): ListenSocket[] {
  const pid = env.LISTEN_PID;
  const count = env.LISTEN_FDS;
  const names = env.LISTEN_FDNAMES;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (pid === undefined || count === undefined) return [];
  if (!/^\d+$/.test(pid)) throw listenFdsError(`LISTEN_PID is not a pid: '${pid}'`);
  if (Number(pid) !== process.pid) return []; // meant for the process that exec'd us, not us
  if (!/^\d+$/.test(count) || Number(count) > 64)
    throw listenFdsError(`LISTEN_FDS must be a count from 0 to 64, got '${count}'`);
  const n = Number(count);
  const nameList = names === undefined ? [] : names.split(':');
  if (names !== undefined && nameList.length !== n)
    throw listenFdsError(`LISTEN_FDNAMES has ${nameList.length} name(s) for ${n} descriptor(s): '${names}'`);
  const taken: ListenSocket[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const num = SD_LISTEN_FDS_START + i;
      const name = nameList[i] || 'unknown';
      let st: ReturnType<typeof native.fstat>;
      try {
        st = native.fstat(num);
      } catch (err) {
        throw listenFdsError(`descriptor ${num} ('${name}'): ${(err as Error).message}`);
      }
      const info = (st.mode & S_IFMT) === S_IFSOCK ? unixSocketInfo(st.ino) : null;
      if (!info?.type) throw listenFdsError(`descriptor ${num} ('${name}') is not an AF_UNIX socket`);
      if (!info.listening) throw listenFdsError(`descriptor ${num} ('${name}') is not listening`);
      // Close-on-exec copy (F_DUPFD_CLOEXEC), then the inheritable original goes.
      const fd = new Fd(native.dup(num));
      native.close(num);
      taken.push({ name, fd, type: info.type, path: info.path });
      native.setNonBlocking(fd.fd, true);
    }
  } catch (err) {
    for (const t of taken) t.fd.close();
    // The ones not yet taken are ours too (systemd passed them to this pid): close them rather than leak.
    for (let i = taken.length; i < n; i++) {
      try {
        native.close(SD_LISTEN_FDS_START + i);
      } catch {
        // not open: nothing to close
      }
    }
    throw err;
  }
  return taken;
}
