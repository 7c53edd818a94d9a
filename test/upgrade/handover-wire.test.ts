// The upgrade's wire (src/broker/handover/wire.ts) carries the state's descriptors in 'fds' messages, in
// order: the new broker gives each its role by its index. A message whose fds did not all arrive (this
// process's fd table full, or more than FDS_PER_MESSAGE sent) would shift every later index without an
// error, handing fds roles that are not theirs: the transfer fails there instead, naming why, with every
// fd received closed (the upgrade then rolls back).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { FDS_PER_MESSAGE, HandoverWire } from '../../src/broker/handover/wire.js';
import { Fd, MemFd, native } from '../../src/sys/index.js';
import { fillFdTable } from '../helpers/fd-table.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

const message = (o: object) => Buffer.from(JSON.stringify(o));

/** A wire whose old-broker end the test drives by hand; `send` writes one message with fds. */
function wirePair(): { wire: HandoverWire; send(o: object, fds: number[]): void; close(): void } {
  const [old, ours] = native.unixPair(false);
  const wire = new HandoverWire(new Fd(ours));
  return {
    wire,
    send: (o, fds) => native.sendmsg(old, message(o), fds),
    close: () => {
      wire.close();
      native.close(old);
    },
  };
}

test('a transfer message carrying more fds than FDS_PER_MESSAGE fails the transfer (EPROTO), its fds closed', async () => {
  const memfd = MemFd.create('wire-too-many', { size: 4096 });
  const w = wirePair();
  try {
    w.send(
      { t: 'fds' },
      Array.from({ length: FDS_PER_MESSAGE + 1 }, () => memfd.fd.fd),
    );
    w.send({ t: 'state', chunk: '{}', last: true }, []);
    await assert.rejects(w.wire.receiveState(Date.now() + 10_000), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'EPROTO');
      assert.match(err.message, /'fds' message of the transfer lost fds \(200 arrived\)/);
      return true;
    });
  } finally {
    w.close();
    memfd.close();
  }
});

test('a transfer message whose fds this process could not take (fd table full) fails the transfer (EMFILE)', {
  timeout: 20_000,
}, async () => {
  const memfd = MemFd.create('wire-table-full', { size: 4096 });
  const w = wirePair();
  try {
    const table = fillFdTable();
    try {
      table.room(1); // one of the three is installed, the next fails
      w.send({ t: 'fds' }, [memfd.fd.fd, memfd.fd.fd, memfd.fd.fd]);
      w.send({ t: 'state', chunk: '{}', last: true }, []);
      await assert.rejects(w.wire.receiveState(Date.now() + 10_000), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'EMFILE');
        assert.match(err.message, /lost fds \(1 arrived\): this process's fd table is full/);
        return true;
      });
    } finally {
      table.restore();
    }
  } finally {
    w.close();
    memfd.close();
  }
});
