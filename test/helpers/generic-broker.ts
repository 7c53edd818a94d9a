// A broker with the generic driver over a vfio-user server child (test/fixtures/vfio-user/server-child.ts):
// a MemoryDevice, a BarDevice ('bars'), or a BarDevice with no reset method ('bars-no-reset'). Everything is
// torn down after `fn`, whatever it did.
import { fork } from 'node:child_process';
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
  const server = fork(serverChild, model === 'memory' ? [sock] : [sock, model], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  try {
    await new Promise<void>((resolve) => server.once('message', () => resolve()));
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
    server.send('stop');
    await new Promise((r) => server.once('exit', r));
    rmSync(dir, { recursive: true, force: true });
  }
}
