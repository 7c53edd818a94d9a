// A broker with the generic driver over a vfio-user server child (test/fixtures/vfio-user/server-child.ts):
// a MemoryDevice, a BarDevice ('bars'), or a BarDevice with no reset method ('bars-no-reset'). Everything is
// torn down after `fn`, whatever it did.
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Broker } from '../../src/broker/broker.js';
import { configFromObject } from '../../src/broker/config.js';
import { VfioUserDevice } from '../../src/device/vfio-user-device.js';

const serverChild = join(
  dirname(fileURLToPath(import.meta.url)),
  '..',
  'fixtures',
  'vfio-user',
  'server-child.js',
);

export async function withGenericBroker(
  opts: {
    model?: 'memory' | 'bars' | 'bars-no-reset';
    /** Config tables beside `rundir` (configFromObject's shape). */
    config?: Record<string, unknown>;
    auditSink?: (line: string) => void;
  },
  fn: (broker: Broker, socket: string) => Promise<void>,
): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-generic-'));
  const sock = join(dir, 'dev.sock');
  const model = opts.model ?? 'memory';
  // Its output is passed through as it comes, and kept to say why it died if it does before it is ready.
  const server = fork(serverChild, model === 'memory' ? [sock] : [sock, model], {
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  let output = '';
  server.stdout!.on('data', (b: Buffer) => {
    output += b;
    process.stdout.write(b);
  });
  server.stderr!.on('data', (b: Buffer) => {
    output += b;
    process.stderr.write(b);
  });
  // 'close', not 'exit': by then all of its output has been read.
  const closed = once(server, 'close') as Promise<[number | null, NodeJS.Signals | null]>;
  try {
    await Promise.race([
      once(server, 'message'),
      closed.then(([code, signal]) => {
        throw new Error(
          `the vfio-user server child exited before it was ready (code ${code}, signal ${signal}): ${output.trim() || 'no output'}`,
        );
      }),
    ]);
    const device = await VfioUserDevice.connect(sock);
    try {
      const broker = await Broker.start({
        config: configFromObject({ rundir: join(dir, 'run'), ...opts.config }),
        device,
        ...(opts.auditSink ? { auditSink: opts.auditSink } : {}),
        log: () => {},
      });
      try {
        await fn(broker, broker.sockets.get('device')!);
      } finally {
        await broker.close();
      }
    } finally {
      await device.close();
    }
  } finally {
    if (server.connected) server.send('stop');
    await closed;
    rmSync(dir, { recursive: true, force: true });
  }
}
