// `devlease top` as a person sees it: running in a tmux pane (a real terminal), its screen captured with
// `tmux capture-pane`. A lease appears in the table when a client takes it, with its holder's pid and its
// queue's work, and disappears when the client exits; `s` changes the sort column and `q` quits. Without a
// terminal it prints plain text (no escape sequences).
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { ClientProc, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

const TMUX_SOCKET = `devlease-top-test-${process.pid}`;

function tmux(...args: string[]): string {
  const r = spawnSync('tmux', ['-L', TMUX_SOCKET, ...args], { encoding: 'utf8' });
  if (r.error)
    assert.fail(`tmux is missing: install Debian's 'tmux' package (.ci/run does): ${r.error.message}`);
  if (r.status !== 0) throw new Error(`tmux ${args.join(' ')}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** The lease table's rows on the screen (between the LEASE header and RECENT EVENTS). */
function tableRows(screen: string): string[] {
  const lines = screen.split('\n');
  const head = lines.findIndex((l) => l.startsWith('LEASE'));
  const end = lines.findIndex((l) => l.startsWith('RECENT EVENTS'));
  if (head < 0 || end < 0) return [];
  return lines.slice(head + 1, end).filter((l) => l.trim() !== '');
}

test('devlease top in tmux: a lease appears with its holder and work, then disappears; s sorts, q quits', async () => {
  const rig = await startRig({ sim: { numQueues: 4 } });
  const admin = join(rig.broker.dir, 'admin.sock');
  const session = 'top';
  let client: ClientProc | null = null;
  const screen = () => tmux('capture-pane', '-p', '-t', session);
  try {
    tmux(
      'new-session',
      '-d',
      '-s',
      session,
      '-x',
      '160',
      '-y',
      '40',
      `${process.execPath} ${DEVLEASE_BIN} top --admin ${admin} --interval 200; sleep 30`,
    );
    await until('top to draw its screen', () => screen().includes('devlease top — device sa1'), 20_000);
    assert.deepEqual(tableRows(screen()), [], 'no lease yet');

    client = await ClientProc.spawn();
    const { info } = await client.call('connect', { socket: rig.socket });
    await client.call('queue');
    const { iova: src } = await client.call('alloc', { name: 's', size: 65536 });
    const { iova: dst } = await client.call('alloc', { name: 'd', size: 65536 });
    await until(
      'the lease to appear in the table',
      () => tableRows(screen()).some((r) => r.startsWith(`${info.lease} `)),
      20_000,
    );
    const row = tableRows(screen()).find((r) => r.startsWith(`${info.lease} `))!;
    const cols = row.split(/\s{2,}/);
    assert.equal(cols[1], 'active');
    assert.equal(cols[2], String(client.pid), 'the holder pid');
    assert.equal(cols[3], process.execPath, 'the holder exe');
    assert.equal(cols[4], String(info.queue));

    // Work on the queue shows as a rate while it runs.
    let busy = true;
    const work = (async () => {
      while (busy) await client!.call('submit', { desc: { opcode: 'COPY', src, dst, length: 65536 } });
    })();
    try {
      await until(
        'a non-zero ops/s for the lease',
        () => {
          const r = tableRows(screen()).find((l) => l.startsWith(`${info.lease} `));
          const ops = r?.split(/\s{2,}/)[5];
          return ops !== undefined && ops !== '-' && ops !== '0';
        },
        20_000,
      );
    } finally {
      busy = false;
      await work;
    }
    assert.match(screen(), /grant\s+lease=queue-\d+ pid=\d+/, 'the grant among the recent events');

    tmux('send-keys', '-t', session, 's');
    await until('the sort column to change', () => screen().includes('sort: pid'), 10_000);

    await client.exit();
    client = null;
    await until('the lease to disappear', () => tableRows(screen()).length === 0, 20_000);
    assert.match(screen(), /released\s+lease=queue-\d+/);

    tmux('send-keys', '-t', session, 'q');
    // top leaves the alternate screen; the pane's shell then sleeps: the table is gone from the screen.
    await until('top to quit', () => !screen().includes('devlease top — device'), 10_000);
  } finally {
    await client?.kill();
    spawnSync('tmux', ['-L', TMUX_SOCKET, 'kill-server']);
    await rig.close();
  }
});

async function run(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [DEVLEASE_BIN, ...args], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    return { status: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return {
      status: typeof e.code === 'number' ? e.code : -1,
      stdout: e.stdout ?? '',
      stderr: e.stderr ?? '',
    };
  }
}

test('devlease top without a terminal prints plain frames', async () => {
  const rig = await startRig({ sim: { numQueues: 2 } });
  try {
    const admin = join(rig.broker.dir, 'admin.sock');
    const client = await ClientProc.spawn();
    const { info } = await client.call('connect', { socket: rig.socket });
    // Not spawnSync: the broker runs in this process and must answer while top runs.
    const r = await run(['top', '--admin', admin, '--iterations', '2', '--interval', '200']);
    await client.exit();
    assert.equal(r.status, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /\x1b/, 'no escape sequences');
    const frames = r.stdout.split(/\n(?=devlease top — )/);
    assert.equal(frames.length, 2);
    assert.ok(
      tableRows(frames[1]!).some((l) => l.startsWith(`${info.lease} `)),
      r.stdout,
    );
    const bad = await run(['top', '--admin', admin, '--interval', '5']);
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--interval must be an integer from 100 to 3600000/);
  } finally {
    await rig.close();
  }
});
