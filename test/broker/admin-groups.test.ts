// Who the admin socket answers by group: a member of admin.group by a supplementary group is served, a
// non-member refused, and the groups are the ones the peer had at connect() (SO_PEERGROUPS), never read from
// /proc/<pid>/status: a connection whose process exited and whose pid an admin-group member's process then
// got was once served as that member. SO_PEERGROUPS failing refuses. Peers run as other users, made by
// test/fixtures/admin/group-peer.js; the broker runs in this process. The fail-nth hook is installed for this
// file (failCall fails one named native call), hence the dynamic imports.
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn, spawnSync } from 'node:child_process';
import { accessSync, chmodSync, constants, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { SeqpacketMessage, SeqpacketSocket as SeqpacketSocketT } from '../../src/sys/index.js';

process.env.DEVLEASE_FAIL_NTH ??= '0';
const { failCall, failNth, failNthFired } = await import('../../src/sys/fail-nth.js');
const { SeqpacketSocket } = await import('../../src/sys/index.js');
const { sleepSync } = await import('../../src/util/sleep-sync.js');
const { startRig } = await import('../helpers/broker-rig.js');
const { trackFdLeaks } = await import('../helpers/fds.js');

const PEER = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'admin', 'group-peer.js');
const NS_LAST_PID = '/proc/sys/kernel/ns_last_pid';
/** admin.group: a gid that is neither peer's primary group. */
const GROUP = 64_000;
/** In the admin group by a supplementary group only. */
const MEMBER = ['65533', '65533', String(GROUP)];
/** In no group but its own. */
const NON_MEMBER = ['65534', '65534', ''];

const leakCheck = trackFdLeaks();
const children: ChildProcess[] = [];
const logged: string[] = [];
let rig: Awaited<ReturnType<typeof startRig>>;
let admin: string;

before(async () => {
  assert.equal(
    process.getuid?.(),
    0,
    'these tests need root: they run admin peers as other users and groups',
  );
  // Mode 0666: a non-member reaches the broker, whose check is the one under test.
  rig = await startRig({ config: { admin: { group: GROUP, mode: 0o666 } }, log: (l) => logged.push(l) });
  chmodSync(rig.dir, 0o755);
  admin = join(rig.broker.dir, 'admin.sock');
});
after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await rig?.close();
  await leakCheck();
});

type Reply = { ok: boolean; code?: string; message?: string };

/** A status request from a peer of `who` (uid, gid, groups), in its own process. */
const askAs = (who: string[]) =>
  new Promise<Reply>((resolve, reject) => {
    execFile(process.execPath, [PEER, 'ask', ...who, admin], { timeout: 60_000 }, (err, stdout, stderr) =>
      err
        ? reject(new Error(`group-peer ask failed: ${err.message}\n${stderr}`))
        : resolve(JSON.parse(stdout)),
    );
  });

/** The supplementary groups of process `pid` now ([] if it is gone). */
function groupsOf(pid: number): number[] {
  try {
    const line = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^Groups:\s*(.*)$/m)?.[1] ?? '';
    return line.split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Polls `pred` with the event loop blocked: the broker in this process accepts nothing meanwhile. */
function waitSync(pred: () => boolean, ms: number): boolean {
  for (const end = Date.now() + ms; Date.now() < end; sleepSync(5)) if (pred()) return true;
  return pred();
}

/** The first message on `sock`, or its close, within 20 s. */
const nextMessage = (sock: SeqpacketSocketT) =>
  new Promise<SeqpacketMessage | null>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no message in 20 s')), 20_000);
    sock.once('message', (m) => {
      clearTimeout(t);
      resolve(m);
    });
    sock.once('close', () => {
      clearTimeout(t);
      resolve(null);
    });
  });

test('a member of admin.group by a supplementary group is served; a non-member is refused (EACCES)', async () => {
  assert.deepEqual(await askAs(MEMBER), { ok: true });
  const refused = await askAs(NON_MEMBER);
  assert.equal(refused.code, 'EACCES', JSON.stringify(refused));
  assert.match(refused.message!, /the admin socket is for root or the admin group/);
});

// The connecting process passes its connection on and exits before the broker accepts it; a process of an
// admin-group member is then given its pid (ns_last_pid set to one less, tried again when another process took
// it first). All of it happens with this event loop blocked, so the broker (in this process) accepts only
// after: /proc/<pid>/status would then tell the member's groups.
test("a connection whose process exited, its pid then an admin-group member's, is refused: the groups are the connect()'s", async () => {
  try {
    accessSync(NS_LAST_PID, constants.W_OK);
  } catch {
    assert.fail(`this test needs root: it writes ${NS_LAST_PID} to give a new process a chosen pid`);
  }
  const [mine, theirs] = SeqpacketSocket.pair();
  let conn: SeqpacketSocketT | null = null;
  try {
    const passed = spawnSync(process.execPath, [PEER, 'pass', ...NON_MEMBER, admin], {
      stdio: ['ignore', 'pipe', 'pipe', theirs.fd.fd],
      encoding: 'utf8',
      timeout: 60_000,
    });
    assert.equal(passed.status, 0, `group-peer pass: ${passed.stderr}`);
    const pid = passed.pid; // exited and reaped (spawnSync waited for it): free
    let member: ChildProcess | null = null;
    for (let i = 0; i < 50 && !member; i++) {
      writeFileSync(NS_LAST_PID, String(pid - 1));
      const p = spawn(process.execPath, [PEER, 'hold', ...MEMBER], { stdio: 'ignore' });
      children.push(p);
      if (p.pid === pid) member = p;
      else p.kill('SIGKILL');
    }
    assert.ok(member, `no process got pid ${pid} in 50 tries`);
    assert.ok(
      waitSync(() => groupsOf(pid).includes(GROUP), 30_000),
      `the member's process (pid ${pid}) took group ${GROUP}: ${groupsOf(pid)}`,
    );
    // The event loop runs from here: the broker accepts the connection, and this end reads it.
    const msg = await nextMessage(mine);
    assert.equal(msg?.fds.length, 1, 'the connection came over the socketpair');
    conn = new SeqpacketSocket(msg!.fds[0]!);
    const reply = nextMessage(conn);
    try {
      conn.send(Buffer.from(JSON.stringify({ op: 'status' })));
    } catch {
      // refused and closed already (EPIPE): the refusal waits to be read
    }
    const answer = await reply;
    assert.ok(answer, 'the broker answered before closing');
    const r = JSON.parse(answer.data.toString('utf8'));
    assert.equal(r.ok, false, `refused, not served as uid 65533's process now at pid ${pid}`);
    assert.equal(r.code, 'EACCES');
    assert.match(r.error, /the admin socket is for root or the admin group/);
  } finally {
    conn?.close();
    mine.close();
    theirs.close();
  }
});

test('SO_PEERGROUPS failing refuses a supplementary-group member (EACCES, saying why), and the broker lives', async () => {
  failCall('peerGroups');
  let refused: Reply;
  try {
    refused = await askAs(MEMBER);
    assert.equal(failNthFired(), 'peerGroups', 'the broker asked for the groups and failed');
  } finally {
    failNth(0);
  }
  assert.equal(refused.code, 'EACCES', JSON.stringify(refused));
  assert.match(
    refused.message!,
    /the groups of uid 65533 could not be read \(peerGroups: Cannot allocate memory/,
  );
  assert.ok(
    logged.some((l) => /admin socket: refused a connection of pid \d+: peerGroups: /.test(l)),
    logged.join('\n'),
  );
  assert.deepEqual(await askAs(MEMBER), { ok: true }, 'the next connection is served');
});
