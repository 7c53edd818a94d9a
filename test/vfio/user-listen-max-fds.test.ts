// A listening VfioUserServer (the broker's lease sockets, the simulator's)
// takes from one message no more fds than it advertises (max_msg_fds): the
// kernel drops the rest unopened. Once it installed all 253 and closed them
// after (each close possibly waiting on a FUSE server, on the closer thread's
// queue). Installs are seen in the fd table's size, which grows to fit them
// and never shrinks (helpers/fds.ts fillFdTable).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { EventFd, MAX_FDS } from '../../src/sys/index.js';
import { encodeCommand } from '../../src/vfio/user/codec.js';
import { encodeVersion, vfio_user_device_info } from '../../src/vfio/user/messages.js';
import * as P from '../../src/vfio/user/protocol.js';
import { VfioUserServer } from '../../src/vfio/user/server.js';
import { connectVfioUser } from '../../src/vfio/user/transport.js';
import { MemoryDevice } from '../fixtures/vfio-user/memory-device.js';
import { fdTableSize, fillFdTable, trackFdLeaks } from '../helpers/fds.js';
import { RawPeer } from './helpers/raw-peer.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test('a message with more fds than max_msg_fds: no more than max_msg_fds are installed, and the connection is closed', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-max-fds-'));
  const devices: MemoryDevice[] = [];
  const logs: string[] = [];
  const server = VfioUserServer.listen(join(dir, 'dev.sock'), {
    createDevice: () => {
      const d = new MemoryDevice();
      devices.push(d);
      return d;
    },
    log: (m) => logs.push(m),
  });
  const efd = new EventFd();
  const peer = new RawPeer(connectVfioUser(join(dir, 'dev.sock')));
  try {
    peer.socket.send(encodeCommand(1, P.VFIO_USER_VERSION, encodeVersion(0, 0, {})));
    const v = await peer.next();
    assert.ok(v && !(v.flags & P.VFIO_USER_F_ERROR), 'VERSION accepted');
    const info = encodeCommand(2, P.VFIO_USER_DEVICE_GET_INFO, vfio_user_device_info.encode({ argsz: 16 }));

    // Exactly max_msg_fds (16) is a message like any other: a command that takes none is refused EINVAL.
    peer.socket.send(info, new Array(P.DEFAULT_MAX_MSG_FDS).fill(efd.fd));
    const r = await peer.next();
    assert.ok(r, 'answered, not cut off');
    assert.equal(r.errorNo, 22);

    // Room for 64 more fds in this process's table: installing 253 would grow it.
    const fillers = fillFdTable(64);
    try {
      const size = fdTableSize();
      peer.socket.send(info, new Array(MAX_FDS).fill(efd.fd));
      assert.equal(await peer.next(5000), null, 'the server closed the connection');
      assert.equal(fdTableSize(), size, 'no more than 64 of the 253 fds were ever installed');
    } finally {
      for (const f of fillers) f.close();
    }
    assert.ok(
      logs.some((l) => /more than 16 fds/.test(l)),
      `the protocol error is logged:\n${logs.join('\n')}`,
    );
  } finally {
    peer.socket.close();
    efd.close();
    await server.close();
    for (const d of devices) d.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});
