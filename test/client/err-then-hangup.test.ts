// On a device hang or error the broker signals the lease's ERR eventfd and closes the session at once. The client
// reads the notice, then asks the broker for its info (a fault, or a reset?); when the hang-up comes before that
// answer, the lease reported 'disconnected' and only then 'device-reset' (seen in the guest: an AER error right
// after an upgrade). A notice read and not yet reported is reported at the hang-up, before 'disconnected'.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, test } from 'node:test';
import { connect } from '../../src/client/lease.js';
import { type Fd, native } from '../../src/sys/index.js';
import { VFIO_PCI_ERR_IRQ_INDEX } from '../../src/vfio/uapi/vfio.js';
import * as P from '../../src/vfio/user/protocol.js';
import { fakeLeaseBroker } from '../helpers/fake-lease-broker.js';
import { assertNoFdLeak, trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test('an ERR notice whose info refresh meets the hang-up: device-reset, then disconnected', async () => {
  await assertNoFdLeak(async () => {
    let err: Fd | null = null;
    let hangUpOnRead = false;
    const broker = fakeLeaseBroker({
      fault: (sock, msg, received) => {
        const index = new DataView(msg.payload.buffer, msg.payload.byteOffset).getUint32(8, true);
        if (msg.command === P.VFIO_USER_DEVICE_SET_IRQS && index === VFIO_PCI_ERR_IRQ_INDEX) {
          err?.close();
          err = received.fds[0]?.dup() ?? null;
        }
        // The info refresh the notice asks for: the broker hangs up instead (its reclaim closed the session).
        if (hangUpOnRead && msg.command === P.VFIO_USER_REGION_READ) {
          sock.close();
          return true;
        }
        return false;
      },
    });
    try {
      const lease = await within(connect({ socket: broker.socket, timeoutMs: 2000 }), 'connect');
      const heard: string[] = [];
      for (const ev of ['device-reset', 'disconnected']) lease.on(ev, () => heard.push(ev));
      try {
        assert.ok(err, 'the lease wired its ERR eventfd');
        hangUpOnRead = true;
        native.eventfdWrite((err as Fd).fd, 1n);
        await within(once(lease, 'disconnected'), 'the hang-up');
        await within(
          new Promise<void>((resolve) =>
            heard.includes('device-reset') ? resolve() : lease.once('device-reset', resolve),
          ),
          'the reset',
        );
        assert.deepEqual(heard, ['device-reset', 'disconnected']);
      } finally {
        lease.close();
      }
    } finally {
      (err as Fd | null)?.close();
      broker.close();
    }
  });
});
