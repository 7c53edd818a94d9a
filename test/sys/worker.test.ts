// The addon is context-aware: it loads in worker threads, each driving its
// own event loop, and a worker's watches are torn down with the worker.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readlinkSync } from 'node:fs';
import { after, test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { MemFd, native, SeqpacketSocket } from '../../src/sys/index.js';
import { openFds, trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const SYS = new URL('../../src/sys/index.js', import.meta.url).href;

test('a worker receives messages and fds on its own loop and maps shared memory', async () => {
  const [mine, theirs] = SeqpacketSocket.pair();
  using memfd = MemFd.create('worker', { size: 4096 });
  using mapping = memfd.map();
  const worker = new Worker(
    `
    const { workerData, parentPort } = require('node:worker_threads');
    import(workerData.sys).then(({ Fd, Mapping, SeqpacketSocket }) => {
      const socket = new SeqpacketSocket(new Fd(workerData.fd));
      socket.on('message', (msg) => {
        const m = Mapping.map(msg.fds[0], { length: 4096, guard: true });
        Atomics.store(m.u32, 0, Number(msg.data.toString()));
        m.unmap();
        for (const fd of msg.fds) fd.close();
        socket.send(Buffer.from('done'));
      });
      socket.on('close', () => parentPort.postMessage('closed'));
      parentPort.postMessage('ready');
    });
    `,
    { eval: true, workerData: { sys: SYS, fd: theirs.fd.release() } },
  );
  try {
    assert.equal((await once(worker, 'message'))[0], 'ready');
    mine.send(Buffer.from('4242'), [memfd.fd]);
    const [reply] = await once(mine, 'message');
    assert.equal(reply.data.toString(), 'done');
    assert.equal(Atomics.load(mapping.u32, 0), 4242);
    mine.close();
    assert.equal((await once(worker, 'message'))[0], 'closed');
  } finally {
    await worker.terminate();
    theirs.close();
  }
});

test('terminating a worker with live watches leaves no handles behind', async () => {
  const [mine, theirs] = SeqpacketSocket.pair();
  const worker = new Worker(
    `
    const { workerData, parentPort } = require('node:worker_threads');
    import(workerData.sys).then(({ Fd, SeqpacketSocket, EventFd }) => {
      const socket = new SeqpacketSocket(new Fd(workerData.fd));
      socket.on('message', () => {});
      const efd = new EventFd();
      efd.onReadable(() => {});
      parentPort.postMessage('ready');
    });
    `,
    { eval: true, workerData: { sys: SYS, fd: theirs.fd.release() } },
  );
  assert.equal((await once(worker, 'message'))[0], 'ready');
  await worker.terminate();
  theirs.close();
  mine.close();
});

test("the addon tells the main thread from a worker: a worker's forgotten fds close with it, the main thread's are its own", async () => {
  assert.equal(native.isMainThread, true);
  const worker = new Worker(
    `
    const { workerData, parentPort } = require('node:worker_threads');
    import(workerData.sys).then(({ MemFd, native }) => {
      // Owned and never closed: only the environment's teardown can close it (terminate runs no finalizers).
      const memfd = MemFd.create('worker-forgotten', { size: 4096 });
      parentPort.postMessage({ isMainThread: native.isMainThread, fd: memfd.fd.fd });
    });
    `,
    { eval: true, workerData: { sys: SYS } },
  );
  const [{ isMainThread, fd }] = await once(worker, 'message');
  assert.equal(isMainThread, false);
  assert.match(readlinkSync(`/proc/self/fd/${fd}`), /memfd:worker-forgotten/);
  await worker.terminate();
  assert.equal(
    openFds().get(fd)?.includes('worker-forgotten') ?? false,
    false,
    "the worker's memfd outlived it",
  );
});
