// `devlease sim` as a real child process: ready line, option errors,
// SIGTERM removing the socket, the stdin control channel.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, test } from 'node:test';
import { spawnSimulator } from '../../src/sim/index.js';
import * as ds from '../../src/sim/model/datasheet.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { BAR0, r32 } from './helpers/driver.js';
import { clientBus, until } from './helpers/real.js';

after(trackFdLeaks());

const BIN = new URL('../../../bin/devlease.js', import.meta.url).pathname;

function tmp(): { dir: string; sock: string; [Symbol.dispose](): void } {
  const dir = mkdtempSync(join(tmpdir(), 'sa1-cli-'));
  return {
    dir,
    sock: join(dir, 'sa1.sock'),
    [Symbol.dispose]: () => rmSync(dir, { recursive: true, force: true }),
  };
}

test('devlease sim prints one ready line, serves the device, and removes its socket on SIGTERM', async () => {
  using t = tmp();
  const child = spawn(
    process.execPath,
    [BIN, 'sim', '--socket', t.sock, '--queues', '8', '--devmem', '4', '--granule', '65536'],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const lines = createInterface({ input: child.stdout });
  const first = await new Promise<string>((resolve, reject) => {
    lines.once('line', resolve);
    child.once('exit', (code) => reject(new Error(`exited ${code} before ready`)));
  });
  assert.match(
    first,
    /^ready socket=\S+ queues=8 stride=65536 devmem-mib=4 granule=65536 idle-poll-us=50 armed-poll-us=10000 max-dma-maps=\d+ pid=\d+$/,
  );
  assert.ok(existsSync(t.sock));
  const client = await VfioUserClient.connect(t.sock);
  assert.equal(await r32(clientBus(client), BAR0, ds.REG_NUM_QUEUES), 8);
  client.close();
  child.kill('SIGTERM');
  assert.equal(await exited, 0, 'clean exit on SIGTERM');
  assert.equal(existsSync(t.sock), false, 'socket removed');
});

test('devlease sim: a bad option names the option and its range, exit 2', () => {
  using t = tmp();
  const cases: [string[], RegExp][] = [
    [['--queues', '0'], /--queues must be an integer from 1 to 1024, got 0/],
    [['--queues', 'many'], /--queues must be an integer from 1 to 1024, got 'many'/],
    [['--stride', '5000'], /--stride must be a power of two from 4096 to 65536/],
    [['--granule', '4096'], /--granule must be a power of two of at least 65536/],
    [['--devmem', '3'], /--devmem must be a power of two number of MiB from 1 to 4096/],
    [['--devmem', '1', '--granule', '2097152'], /--devmem must be .*multiple of the granule/],
    [['--idle-poll-us', '-1'], /--idle-poll-us/],
    [['--armed-poll-us', '1000001'], /--armed-poll-us must be an integer from 0 to 1000000 µs, got 1000001/],
    [['--bogus'], /Unknown option '--bogus'/],
  ];
  for (const [args, message] of cases) {
    const r = spawnSync(process.execPath, [BIN, 'sim', '--socket', t.sock, ...args], { encoding: 'utf8' });
    assert.equal(r.status, 2, `${args.join(' ')}: exit 2`);
    assert.match(r.stderr, message, args.join(' '));
    assert.equal(existsSync(t.sock), false);
  }
  const missing = spawnSync(process.execPath, [BIN, 'sim'], { encoding: 'utf8' });
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, /--socket PATH is required/);
});

test('spawnSimulator: fault injection through the control channel reaches the device', async () => {
  using t = tmp();
  const sim = await spawnSimulator({
    socketPath: t.sock,
    numQueues: 2,
    devmemSize: 1 << 20,
    devmemGranule: 1 << 16,
  });
  try {
    const client = await VfioUserClient.connect(t.sock);
    const bus = clientBus(client);
    await sim.inject({ kind: 'hang' });
    await until(async () => ((await r32(bus, BAR0, ds.REG_STATUS)) & ds.STATUS_HUNG) !== 0, 'HUNG');
    await sim.inject({ kind: 'fault', queue: 1, code: ds.ST_WINDOW_VIOLATION, iova: 0x99n });
    assert.equal(await r32(bus, BAR0, ds.REG_FAULT_HEAD), 2, 'HANG record, then the injected one');
    await assert.rejects(sim.inject({ kind: 'fault', queue: 7 }), /no queue 7/);
    assert.equal((await sim.stats()).firmwareRunning, false);
    client.close();
  } finally {
    await sim.close();
  }
  assert.equal((await sim.exited).code, 0);
  assert.equal(existsSync(t.sock), false);
});
