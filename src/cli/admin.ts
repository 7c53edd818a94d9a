// Admin commands: status, leases, revoke, drain, reset, reload — JSON over the broker's admin socket.

import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { MAX_REVOKE_DEADLINE_MS } from '../broker/lease.js';
import { DevleaseError, isSysError } from '../errors.js';
import { SeqpacketSocket } from '../sys/index.js';
import {
  AdminNoAnswerError,
  adminWait,
  DEFAULT_WAIT_MS,
  MAX_WAIT_MS,
  noAnswerMessage,
  parseTimeout,
} from './admin-wait.js';

/**
 * One admin request and its reply. Every failure is a DevleaseError with a `code`: the connect's errno
 * (ENOENT, ECONNREFUSED), ETIMEDOUT past `timeoutMs` (an AdminNoAnswerError: the outcome is unknown),
 * ECONNRESET when the broker closes without answering, EPROTO for a reply that is not the admin protocol's
 * JSON, a socket error's own errno (a failed recvmsg), and the broker's code for a refusal (a failed
 * recovery's ETIMEDOUT among them: a DevleaseError, not an AdminNoAnswerError).
 */
export async function adminRequest(
  path: string,
  req: Record<string, unknown>,
  timeoutMs = DEFAULT_WAIT_MS,
): Promise<unknown> {
  return await adminRequestOver(SeqpacketSocket.connect(path), path, req, timeoutMs);
}

/** adminRequest() over a socket already connected to `path` (this takes it, and closes it). */
export async function adminRequestOver(
  sock: SeqpacketSocket,
  path: string,
  req: Record<string, unknown>,
  timeoutMs = DEFAULT_WAIT_MS,
): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new AdminNoAnswerError(path, timeoutMs)), timeoutMs);
      // A socket error (a failed recvmsg or sendmsg) ends the request; without this listener it was an
      // uncaught 'error' event that took the whole process down.
      sock.on('error', reject);
      sock.once('message', (msg) => {
        for (const fd of msg.fds) fd.close();
        if (msg.truncated) {
          // Longer than this end reads (the broker sends at most ADMIN_MAX_REPLY, which fits): not its reply whole.
          reject(new DevleaseError('EMSGSIZE', `${path} answered with more than ${sock.maxMessage} bytes`));
          return;
        }
        let reply: { ok?: unknown; result?: unknown; error?: unknown; code?: unknown };
        try {
          reply = JSON.parse(msg.data.toString('utf8'));
        } catch {
          reject(new DevleaseError('EPROTO', `${path} answered with something that is not JSON`));
          return;
        }
        if (reply?.ok === true) resolve(reply.result);
        else {
          const code = typeof reply?.code === 'string' && reply.code ? reply.code : 'EPROTO';
          const reason = typeof reply?.error === 'string' ? reply.error : 'refused, without a reason';
          reject(new DevleaseError(code, reason, { reason }));
        }
      });
      sock.once('close', () =>
        reject(new DevleaseError('ECONNRESET', `${path} closed the connection without answering`)),
      );
      try {
        sock.send(Buffer.from(JSON.stringify(req)));
      } catch (err) {
        // The broker refuses a connection (not root nor of admin.group; too many open) as soon as it accepts it:
        // its reason, then a close. Were that before this send, the send fails EPIPE, and the reason still
        // waits to be read: the 'message' (or, with no reason sent, the 'close') above settles the request.
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EPIPE' && code !== 'ECONNRESET') throw err;
      }
    });
  } finally {
    clearTimeout(timer);
    sock.close();
  }
}

/** What a failed connect means here: its errno alone named neither the socket tried nor what to check. */
const CONNECT_HINTS: Record<string, string> = {
  ENOENT:
    'no socket there: is the daemon running, and do --admin, --rundir and --device name its admin socket?',
  ECONNREFUSED: 'nothing listens there: the broker stopped, or it is not a socket',
  EACCES: 'not permitted: admin.mode and admin.group decide who may connect',
  EPROTOTYPE: "not a broker's admin socket: a lease or device socket?",
};

/** An admin command's failure for its one line on stderr: a failed connect names the socket it tried. */
export function adminFailure(path: string, err: unknown): string {
  const message = (err as Error).message;
  if (!isSysError(err) || err.syscall !== 'connect') return message;
  const hint = CONNECT_HINTS[err.code];
  return `cannot connect to ${path}: ${message}${hint ? ` (${hint})` : ''}`;
}

const USAGE = `usage: devlease status|leases|clients [--json]
       devlease revoke <lease-id> [--deadline MS (0..86400000, 24 h)] [--json]
       devlease drain [--off] [--json]
       devlease reset [--json]   reset and recover the device; waits for the broker's estimate of its recovery
       devlease reload [--json]   re-read the broker's config and policy module (as SIGHUP does)
       devlease upgrade [--binary PATH] [--config FILE] [--json]   hand everything to a new broker process,
                  clients keep their leases (as SIGUSR2 does with the same binary; docs/ARCHITECTURE.md)
  common: --admin PATH (default RUNDIR/DEVICE/admin.sock), --rundir DIR (default /run/devlease), --device NAME (default sa1)
          --timeout MS (1..${MAX_WAIT_MS}, 24 h): how long to wait for the broker's answer (default 10 s;
                  upgrade 60 s; reset: the broker's recovery estimate, recovery.boundMs in status, plus 5 s)`;

export async function adminCommand(cmd: string, argv: string[]): Promise<number> {
  let parsed: { values: Record<string, string | boolean | undefined>; positionals: string[] };
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        json: { type: 'boolean' },
        deadline: { type: 'string' },
        off: { type: 'boolean' },
        admin: { type: 'string' },
        rundir: { type: 'string' },
        device: { type: 'string' },
        binary: { type: 'string' },
        config: { type: 'string' },
        timeout: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    process.stderr.write(`devlease ${cmd}: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  // Only revoke takes an argument (one lease id): another word was silently ignored (`devlease status queue-1`
  // answered with the whole status; `revoke a b` revoked a alone).
  const extra = positionals.slice(cmd === 'revoke' ? 1 : 0);
  if (extra.length) {
    process.stderr.write(`devlease ${cmd}: unexpected argument '${extra[0]}'\n${USAGE}\n`);
    return 2;
  }
  const str = (k: string): string | undefined =>
    typeof values[k] === 'string' ? (values[k] as string) : undefined;
  const path = str('admin') ?? join(str('rundir') ?? '/run/devlease', str('device') ?? 'sa1', 'admin.sock');
  let timeoutMs: number | undefined;
  if (str('timeout') !== undefined) {
    const t = parseTimeout(str('timeout')!);
    if (typeof t !== 'number') {
      process.stderr.write(`devlease ${cmd}: ${t.error}\n${USAGE}\n`);
      return 2;
    }
    timeoutMs = t;
  }
  let req: Record<string, unknown>;
  switch (cmd) {
    case 'revoke': {
      const id = positionals[0];
      if (!id) {
        process.stderr.write(`devlease revoke: name the lease id\n${USAGE}\n`);
        return 2;
      }
      // Digits only, as parseTimeout: Number() read '' and ' ' as 0 (an immediate forced reclaim), '0x10' as 16.
      const raw = str('deadline');
      const deadlineMs = raw === undefined ? undefined : /^[0-9]+$/.test(raw) ? Number(raw) : Number.NaN;
      if (
        deadlineMs !== undefined &&
        (!Number.isSafeInteger(deadlineMs) || deadlineMs < 0 || deadlineMs > MAX_REVOKE_DEADLINE_MS)
      ) {
        process.stderr.write(
          `devlease revoke: --deadline must be a non-negative integer (ms) of at most ${MAX_REVOKE_DEADLINE_MS} (24 h), got '${values.deadline}'\n`,
        );
        return 2;
      }
      req = { op: 'revoke', id, deadlineMs };
      break;
    }
    case 'drain':
      req = { op: 'drain', on: !values.off };
      break;
    case 'upgrade': {
      const { resolve } = await import('node:path');
      req = {
        op: 'upgrade',
        ...(str('binary') ? { binary: resolve(str('binary')!) } : {}),
        ...(str('config') ? { config: resolve(str('config')!) } : {}),
      };
      break;
    }
    default:
      req = { op: cmd };
  }
  let result: unknown;
  try {
    // A reset answers when the recovery ends, an upgrade when the new broker took over: admin-wait.ts.
    const wait = await adminWait(cmd, timeoutMs, (r, ms) => adminRequest(path, r, ms));
    try {
      result = await adminRequest(path, req, wait.ms);
    } catch (err) {
      if (!(err instanceof AdminNoAnswerError)) throw err;
      const status = `devlease status${values.admin || values.rundir || values.device ? ` --admin ${path}` : ''}`;
      process.stderr.write(`devlease ${cmd}: ${noAnswerMessage(cmd, wait, status)}\n`);
      return 1;
    }
  } catch (err) {
    process.stderr.write(`devlease ${cmd}: ${adminFailure(path, err)}\n`);
    return 1;
  }
  if (values.json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  else process.stdout.write(`${formatHuman(cmd, result)}\n`);
  return 0;
}

function formatHuman(cmd: string, result: unknown): string {
  if (cmd === 'leases' && Array.isArray(result)) {
    if (result.length === 0) return 'no leases';
    const rows = result.map((l: Record<string, unknown>) =>
      [
        l.id,
        l.state,
        l.pid,
        l.uid,
        l.queue ?? '-',
        viewColumn(l.iovaView),
        l.mappings,
        l.mappedBytes,
        l.outstandingSliceFds,
        isolationColumn(l.isolation),
      ].map(String),
    );
    return table(
      ['LEASE', 'STATE', 'PID', 'UID', 'QUEUE', 'IOVA-VIEW', 'MAPS', 'BYTES', 'SLICE-FDS', 'ISOLATION'],
      rows,
    );
  }
  return JSON.stringify(result, null, 2);
}

/** "bar2=audited queuePage=enforced": each resource's isolation level. */
function isolationColumn(iso: unknown): string {
  if (!iso || typeof iso !== 'object') return '-';
  return Object.entries(iso as Record<string, unknown>)
    .map(([k, v]) => `${k}=${String(v)}`)
    .join(' ');
}

/** "translated [0x0,+0x100000000)@0x100000000" or "identity [...]": the client's IOVA space and where it lands. */
function viewColumn(v: unknown): string {
  if (!v || typeof v !== 'object') return '-';
  const { mode, base, size, device } = v as Record<string, unknown>;
  return `${String(mode)} [${String(base)},+${String(size)})${mode === 'translated' ? `@${String(device)}` : ''}`;
}

export function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => c.padEnd(w[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [line(head), ...rows.map(line)].join('\n');
}
