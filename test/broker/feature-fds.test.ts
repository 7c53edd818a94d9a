// Regression (found by the fuzz suite): fds a lease client attaches to a
// VFIO_USER_DEVICE_FEATURE request were never closed by the broker — the
// lease refuses every feature (ENOTSUP) and threw without closing the fds
// the connection had handed over with take(). Three things make this test
// see it, where a looser one passes without the fix:
// - the request must get past the connection's own checks (after VERSION,
//   known flags, GET xor SET, not a migration feature): those refusals are
//   made before take() and the connection closes the fds itself;
// - the count is of the broker's descriptors (here: this process, which runs
//   the broker), taken while the connection is still open — closing it does
//   not close fds held by nobody;
// - the fd's finalizer (src/sys/fd.ts) closes an unreachable Fd at GC with a
//   DevleaseLeak warning, so a GC between request and count would hide the
//   leak: the test forces a GC and fails on that warning too.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { EventFd } from '../../src/sys/index.js';
import { VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_SET } from '../../src/vfio/uapi/vfio.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { type Rig, startRig, until } from '../helpers/broker-rig.js';
import { openFds, trackFdLeaks } from '../helpers/fds.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const leakCheck = trackFdLeaks();
let rig: Rig;
before(async () => {
  rig = await startRig();
});
after(async () => {
  await rig.close();
  await leakCheck();
});

const settle = () => new Promise((r) => setTimeout(r, 100));

test('fds attached to DEVICE_FEATURE on a lease are closed by the broker (GET and SET, refused ENOTSUP)', async () => {
  const leaks: string[] = [];
  const onWarning = (w: Error) => {
    if (w.name === 'DevleaseLeak') leaks.push(w.message);
  };
  process.on('warning', onWarning);
  const client = await VfioUserClient.connect(rig.socket, {
    timeoutMs: 10_000,
    capabilities: { devlease: { request: {} } },
  });
  try {
    // VERSION is answered while the grant's device commands are served: the lease enters the table after.
    await until('the connection holds a lease', () => rig.broker.leases.all().length === 1, 10_000);
    await settle();
    const fdsBefore = openFds();
    for (const flags of [VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_SET]) {
      for (let round = 0; round < 4; round++) {
        const efds = [new EventFd(), new EventFd(), new EventFd()];
        try {
          // Feature 3 (VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY): valid, not migration; the lease refuses it.
          await assert.rejects(client.feature({ flags, feature: 3, fds: efds.map((e) => e.fd) }), {
            code: 'ENOTSUP',
          });
        } finally {
          for (const e of efds) e.close(); // the client's copies; the broker's are its own to close
        }
      }
    }
    await settle();
    const fdsAfter = openFds();
    const added = [...fdsAfter].filter(([fd, t]) => fdsBefore.get(fd) !== t).map(([fd, t]) => `${fd}->${t}`);
    assert.deepEqual(
      added,
      [],
      `the broker kept fds the client attached to DEVICE_FEATURE: ${added.join(' ')}`,
    );
    gc();
    await settle();
    assert.deepEqual(leaks, [], 'fds were left to the finalizer (garbage-collected without close())');
    assert.equal(rig.broker.leases.all().length, 1, 'the lease is still served');
  } finally {
    client.close();
    process.off('warning', onWarning);
  }
});
