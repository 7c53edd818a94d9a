// On a device hang or error the broker signals the lease's ERR eventfd and closes the session at once. The client
// reads the notice, then asks the broker for its info (a fault, or a reset?); when the hang-up comes before that
// answer, the lease reported 'disconnected' and only then 'device-reset' (seen in the guest: an AER error right
// after an upgrade). A notice read and not yet reported is reported at the hang-up, before 'disconnected'.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, test } from 'node:test';
import { connect } from '../../src/client/lease.js';
import { type Fd, native, type StreamSocket } from '../../src/sys/index.js';
import { encodeReply, type VfioUserMessage } from '../../src/vfio/user/codec.js';
import * as P from '../../src/vfio/user/protocol.js';
import { errEventfdOf, fakeLeaseBroker, LEASE_INFO } from '../helpers/fake-lease-broker.js';
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
        const wired = errEventfdOf(msg, received);
        if (wired) {
          err?.close();
          err = wired;
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

// Two notices overlap: a fault's (its refresh answered late) and a reset's (its refresh met by the hang-up). The
// first one's answer must not take the second for reported.
test('two ERR notices overlap, the second met by the hang-up: device-fault, device-reset, then disconnected', async () => {
  await assertNoFdLeak(async () => {
    let err: Fd | null = null;
    let armed = false;
    let held: { sock: StreamSocket; msg: VfioUserMessage } | null = null;
    const faulted = {
      ...LEASE_INFO,
      faults: [{ queue: 0, code: 3, name: 'WINDOW_VIOLATION', address: '0x1000' }],
      faultsTotal: 1,
    };
    const broker = fakeLeaseBroker({
      fault: (sock, msg, received) => {
        const wired = errEventfdOf(msg, received);
        if (wired) {
          err?.close();
          err = wired;
        }
        if (!armed || msg.command !== P.VFIO_USER_REGION_READ) return false;
        if (!held) {
          held = { sock, msg }; // the first notice's refresh: answered once the second asks
          return true;
        }
        // The second notice's refresh: the first is answered (a fault), then the session hangs up.
        const b = Buffer.from(
          held.msg.payload.buffer,
          held.msg.payload.byteOffset,
          held.msg.payload.byteLength,
        );
        const info = Buffer.alloc(16384);
        info.write(JSON.stringify(faulted));
        const data = info.subarray(
          Number(b.readBigUInt64LE(0)),
          Number(b.readBigUInt64LE(0)) + b.readUInt32LE(12),
        );
        sock.send(encodeReply(held.msg.msgId, held.msg.command, Buffer.concat([b.subarray(0, 16), data])));
        sock.close();
        return true;
      },
    });
    try {
      const lease = await within(connect({ socket: broker.socket, timeoutMs: 2000 }), 'connect');
      const heard: string[] = [];
      for (const ev of ['device-fault', 'device-reset', 'disconnected']) lease.on(ev, () => heard.push(ev));
      try {
        armed = true;
        native.eventfdWrite((err as Fd | null)!.fd, 1n);
        await within(
          (async () => {
            while (!held) await new Promise((r) => setTimeout(r, 5));
          })(),
          'the first refresh',
        );
        native.eventfdWrite((err as Fd | null)!.fd, 1n);
        await within(once(lease, 'disconnected'), 'the hang-up');
        assert.deepEqual(heard, ['device-fault', 'device-reset', 'disconnected']);
      } finally {
        lease.close();
      }
    } finally {
      (err as Fd | null)?.close();
      broker.close();
    }
  });
});
