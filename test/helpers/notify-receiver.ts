// systemd's side of NOTIFY_SOCKET, by someone else's implementation: Python binds the datagram socket (a path,
// or an abstract name) and prints each message it receives as a line.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { until } from '../interop/helpers/peers.js';

export interface NotifyReceiver {
  /** What NOTIFY_SOCKET is set to: the path, or '@' and the abstract name. */
  address: string;
  /** Each datagram, trimmed, in order of arrival. */
  messages: string[];
  close(): void;
}

export async function notifyReceiver(opts: { abstract?: boolean } = {}): Promise<NotifyReceiver> {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-notify-'));
  const address = opts.abstract ? `@devlease-notify-${process.pid}-${Date.now()}` : join(dir, 'notify.sock');
  const script = [
    'import socket, sys',
    'a = sys.argv[1]',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
    's.bind("\\0" + a[1:] if a.startswith("@") else a)',
    'print("ready", flush=True)',
    'while True: print(s.recv(4096).decode().strip(), flush=True)',
  ].join('\n');
  const py = spawn('python3', ['-c', script, address], { stdio: ['ignore', 'pipe', 'inherit'] });
  let failed: Error | null = null;
  py.once('error', (e) => {
    failed = e;
  });
  const messages: string[] = [];
  let buf = '';
  py.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      messages.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
  await until(
    'the notify receiver (python3) to bind',
    () => {
      if (failed) assert.fail(`python3 is needed to receive NOTIFY_SOCKET messages: ${failed.message}`);
      return messages.includes('ready');
    },
    10_000,
  );
  messages.length = 0;
  return {
    address,
    messages,
    close: () => {
      py.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
