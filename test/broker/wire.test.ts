// The wire a stock peer meets: every vfio-user socket of a running deployment
// (the simulator's, each lease kind's) listens as AF_UNIX SOCK_STREAM — what
// `ss -x` shows as u_str — and a SOCK_SEQPACKET client is refused, as QEMU's
// and libvfio-user's would be refused by a SEQPACKET listener.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { native } from '../../src/sys/index.js';
import { type Rig, startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
let rig: Rig;
before(async () => {
  rig = await startRig();
});
after(async () => {
  await rig?.close();
  await leakCheck();
});

/** Socket type of each listening unix socket path, from /proc/net/unix (what ss -x reads). */
function listeners(): Map<string, string> {
  const types: Record<string, string> = { '0001': 'stream', '0002': 'dgram', '0005': 'seqpacket' };
  const out = new Map<string, string>();
  for (const line of readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    // Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 = __SO_ACCEPTCON (listening)
    if (f.length < 8 || f[3] !== '00010000') continue;
    out.set(f[7]!, types[f[4]!] ?? f[4]!);
  }
  return out;
}

test('the simulator and every lease socket listen as SOCK_STREAM; the admin socket is the only SEQPACKET', () => {
  const l = listeners();
  const vfioUser = [rig.simSocket, ...rig.broker.sockets.values()];
  assert.ok(vfioUser.length >= 2);
  for (const path of vfioUser) assert.equal(l.get(path), 'stream', `${path} is u_str`);
  const ours = [...l].filter(([p]) => p.startsWith(rig.dir));
  const seqpacket = ours.filter(([, t]) => t === 'seqpacket').map(([p]) => p);
  assert.deepEqual(
    seqpacket.map((p) => p.split('/').pop()),
    ['admin.sock'],
    'only the admin socket is SEQPACKET',
  );
});

test('a SOCK_SEQPACKET client gets EPROTOTYPE from a lease socket, as a stock peer would from the old wire', () => {
  const lease = [...rig.broker.sockets.values()][0]!;
  assert.throws(() => native.close(native.unixConnect(lease, false)), { code: 'EPROTOTYPE' });
  assert.throws(() => native.close(native.unixConnect(rig.simSocket, false)), { code: 'EPROTOTYPE' });
});
