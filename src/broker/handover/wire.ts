// The upgrade's wire between the old broker and the new one: a SOCK_SEQPACKET
// socketpair, one JSON object per message; descriptors ride with 'fds'
// messages (at most FDS_PER_MESSAGE each), the state's JSON with 'state'
// chunks. Every wait has a deadline; a hang-up is an answer ('gone').
//
//   new → old  {t:'hello', versions:[...], pid}        the new broker is up and says what it reads
//   old → new  {t:'fds'} ×N (with fds), {t:'state', chunk, last}
//   new → old  {t:'ready'} | {t:'refuse', reason}      rebuilt and checked, or why not
//   old → new  {t:'commit'} | {t:'abort', reason}       the one decision; the old broker exits after commit

import { Fd } from '../../sys/fd.js';
import { SeqpacketSocket } from '../../sys/index.js';

export const FDS_PER_MESSAGE = 200;
const CHUNK = 48 * 1024;

export type WireMessage = { t: string; [k: string]: unknown };

/** A message, or the peer gone (hang-up), or nothing before the deadline. */
export type Received = { msg: WireMessage; fds: Fd[] } | 'gone' | 'timeout';

export class HandoverWire {
  readonly socket: SeqpacketSocket;
  readonly #queue: { msg: WireMessage; fds: Fd[] }[] = [];
  #waiter: (() => void) | null = null;
  #gone = false;

  constructor(fd: Fd) {
    this.socket = new SeqpacketSocket(fd, { maxMessage: CHUNK + 4096, maxFds: FDS_PER_MESSAGE });
    this.socket.on('message', (m: { data: Buffer; fds: Fd[]; ctruncated: boolean }) => {
      let msg: WireMessage;
      try {
        msg = JSON.parse(m.data.toString('utf8')) as WireMessage;
      } catch {
        msg = { t: 'garbled' };
      }
      // Fds of a message lost on the way (this process's fd table full, or more than FDS_PER_MESSAGE): every
      // later fd would take the role of the one before it, so the transfer fails here (receiveState).
      if (m.ctruncated) msg = { t: 'fds-lost', of: msg.t, arrived: m.fds.length };
      this.#queue.push({ msg, fds: m.fds });
      this.#waiter?.();
    });
    this.socket.on('close', () => {
      this.#gone = true;
      this.#waiter?.();
    });
    this.socket.on('error', () => this.socket.close());
  }

  send(msg: WireMessage, fds: (Fd | number)[] = []): void {
    this.socket.send(Buffer.from(JSON.stringify(msg)), fds);
  }

  /** The next message, 'gone' once the peer hung up and nothing is left, or 'timeout'. */
  async next(deadline: number): Promise<Received> {
    for (;;) {
      const m = this.#queue.shift();
      if (m) return m;
      if (this.#gone) return 'gone';
      const left = deadline - Date.now();
      if (left <= 0) return 'timeout';
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, left);
        function done() {
          clearTimeout(t);
          resolve();
        }
        this.#waiter = done;
      });
      this.#waiter = null;
    }
  }

  /** Send the state: its fds first (in order), then its JSON in chunks (`between` runs in between: tests). */
  sendState(json: string, fds: (Fd | number)[], between?: () => void): void {
    for (let i = 0; i < fds.length; i += FDS_PER_MESSAGE) {
      this.send({ t: 'fds' }, fds.slice(i, i + FDS_PER_MESSAGE));
    }
    between?.();
    for (let i = 0; i < json.length || i === 0; i += CHUNK) {
      this.send({ t: 'state', chunk: json.slice(i, i + CHUNK), last: i + CHUNK >= json.length });
    }
  }

  /** Receive what sendState sent; throws naming what was wrong, closing every fd received. */
  async receiveState(deadline: number): Promise<{ json: string; fds: Fd[] }> {
    const fds: Fd[] = [];
    let json = '';
    try {
      for (;;) {
        const r = await this.next(deadline);
        if (r === 'gone')
          throw Object.assign(new Error('the old broker went away mid-transfer'), { code: 'EPIPE' });
        if (r === 'timeout')
          throw Object.assign(new Error('the state did not arrive in time'), { code: 'ETIMEDOUT' });
        fds.push(...r.fds);
        if (r.msg.t === 'fds-lost')
          throw Object.assign(
            new Error(
              `a '${String(r.msg['of'])}' message of the transfer lost fds (${String(r.msg['arrived'])} arrived): this process's fd table is full, or the old broker sent more than ${FDS_PER_MESSAGE}`,
            ),
            { code: Number(r.msg['arrived']) < FDS_PER_MESSAGE ? 'EMFILE' : 'EPROTO' },
          );
        if (r.msg.t === 'abort')
          throw Object.assign(new Error(`aborted: ${String(r.msg['reason'])}`), { code: 'ECANCELED' });
        if (r.msg.t === 'fds') continue;
        if (r.msg.t !== 'state')
          throw Object.assign(new Error(`unexpected '${r.msg.t}' during the transfer`), { code: 'EPROTO' });
        json += String(r.msg['chunk']);
        if (r.msg['last'] === true) return { json, fds };
      }
    } catch (err) {
      for (const f of fds) f.close();
      throw err;
    }
  }

  close(): void {
    this.socket.close();
  }
}

/** JSON with bigints kept as {"$big":"<hex>"} (IOVAs, sizes), so both sides read the same numbers. */
export function encodeState(v: unknown): string {
  return JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? { $big: x.toString(16) } : x));
}

export function decodeState(s: string): unknown {
  return JSON.parse(s, (_k, x) =>
    x &&
    typeof x === 'object' &&
    typeof (x as { $big?: unknown }).$big === 'string' &&
    Object.keys(x).length === 1
      ? BigInt(`0x${(x as { $big: string }).$big}`)
      : x,
  );
}

export { Fd };
