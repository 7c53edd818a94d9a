// Watches in the thread's shared epoll set (native/poll_shared.cc) behave as uv_poll watches do: the same
// callbacks for readiness, a peer's reset and hang-up, the same loop ref semantics; a watcher stopped by an
// earlier callback of the same wake-up is not called; a worker's set goes with the worker.
import assert from 'node:assert/strict';
import { AsyncLocalStorage } from 'node:async_hooks';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { after, test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { EventFd, Fd, native } from '../../src/sys/index.js';
import { DISCONNECT, READABLE, Watch, type WatchKind } from '../../src/sys/watch.js';
import { openFds, trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const UV_EBADF = -9;
const KINDS: WatchKind[] = ['own', 'shared'];
const turns = async (n = 5): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

/** Every (status, events) a watch of `kind` reports for `fd` while `act` runs and a few loop turns after it. */
async function seen(
  kind: WatchKind,
  fd: number,
  events: number,
  act: () => void,
): Promise<[number, number][]> {
  const calls: [number, number][] = [];
  const watch = new Watch(
    fd,
    events,
    (status, ev) => {
      calls.push([status, ev]);
      if (calls.length > 20) watch.stop(); // a level-triggered report nobody drains: stop counting it
    },
    kind,
  );
  try {
    await turns();
    act();
    await turns(10);
  } finally {
    watch.stop();
  }
  return calls;
}

test('a shared watch reports readiness, a reset and a hang-up as an own (uv_poll) watch does', async () => {
  const results: Record<string, unknown>[] = [];
  for (const kind of KINDS) {
    // An eventfd: readable once written, drained by the callback, so one report.
    const efd = new EventFd();
    const calls: [number, number][] = [];
    const watch = new Watch(
      efd.fd.fd,
      READABLE,
      (status, ev) => {
        calls.push([status, ev]);
        efd.read();
      },
      kind,
    );
    await turns();
    assert.deepEqual(calls, [], `${kind}: nothing before the write`);
    efd.write(3n);
    await turns();
    watch.stop();
    efd.write(1n);
    await turns();
    efd.close();

    // A socket whose peer closed with our message unread: ECONNRESET on ours, which libuv reports as UV_EBADF once
    // and then stops reporting.
    const [a, b] = native.unixPair(true);
    native.sendmsg(a, Buffer.from('unread'), []);
    const reset = await seen(kind, a, READABLE, () => native.close(b));
    native.close(a);

    // A peer's hang-up, watched for DISCONNECT only.
    const [c, d] = native.unixPair(true);
    const hangUp = await seen(kind, c, DISCONNECT, () => native.close(d));
    native.close(c);
    results.push({
      kind,
      eventfd: calls,
      reset,
      hangUp: hangUp.slice(0, 1),
      hangUpReports: hangUp.length > 0,
    });
  }
  const [own, shared] = results;
  assert.deepEqual(own!.eventfd, [[0, READABLE]]);
  assert.deepEqual(own!.reset, [[UV_EBADF, 0]]);
  assert.deepEqual(own!.hangUp, [[0, DISCONNECT]]);
  assert.deepEqual({ ...shared, kind: 'own' }, own, 'the shared watch reports what uv_poll reports');
});

test('a watcher stopped by an earlier callback of the same wake-up is not called', async () => {
  const a = new EventFd();
  const b = new EventFd();
  const calls: string[] = [];
  const watches: Watch[] = [];
  const stopBoth = () => {
    for (const w of watches) w.stop();
  };
  const onReady = (name: string) => () => {
    calls.push(name);
    stopBoth();
  };
  watches.push(new Watch(a.fd.fd, READABLE, onReady('a'), 'shared'));
  watches.push(new Watch(b.fd.fd, READABLE, onReady('b'), 'shared'));
  // Both readable before the loop looks: one epoll_wait returns both; the first callback stops the second.
  a.write(1n);
  b.write(1n);
  await turns(10);
  assert.equal(calls.length, 1, `one callback, not ${calls.join(', ')}`);
  // The other one was readable all along (its count is still there): its event came and was dropped.
  const other = calls[0] === 'a' ? b : a;
  assert.equal(other.read(), 1n);
  a.close();
  b.close();
});

test('an event of the same wake-up is dropped for a watcher whose events an earlier callback changed', async () => {
  // As libuv drops a handle's pending events when it is started again: B's callback must not run on an event
  // that came before A's callback drained B and set B's events anew (the same thing uv_poll does).
  for (const kind of KINDS) {
    const a = new EventFd();
    const b = new EventFd();
    const calls: string[] = [];
    let wb: Watch | null = null;
    const wa = new Watch(
      a.fd.fd,
      READABLE,
      () => {
        calls.push('a');
        a.read();
        b.read(); // drained: B's pending event is now stale
        wb!.events = 0;
        wb!.events = READABLE;
      },
      kind,
    );
    wb = new Watch(b.fd.fd, READABLE, () => calls.push(`b:${b.read()}`), kind);
    a.write(1n);
    b.write(1n);
    await turns(10);
    wa.stop();
    wb.stop();
    a.close();
    b.close();
    // A was written first, and epoll reports fds in the order they became ready: A's callback runs first, and
    // B's must not run after it on an event from before (it would read nothing: 'b:null').
    assert.deepEqual(calls, ['a'], `${kind}: ${calls.join(', ')}`);
  }
});

test("a shared watch's callbacks run in the async context of whoever started it (AsyncLocalStorage)", async () => {
  const als = new AsyncLocalStorage<string>();
  const seenIn: Record<string, string | undefined> = {};
  const efds: EventFd[] = [];
  for (const tenant of ['A', 'B']) {
    als.run(tenant, () => {
      const efd = new EventFd();
      efds.push(efd);
      efd.onReadable(() => {
        seenIn[tenant] = als.getStore();
      }, 'shared');
    });
  }
  for (const efd of efds) efd.write(1n);
  await turns();
  for (const efd of efds) efd.close();
  assert.deepEqual(seenIn, { A: 'A', B: 'B' });
});

test('setting no events quiets a shared watch until events are asked again; a second watch of the fd is EEXIST', async () => {
  const efd = new EventFd();
  let calls = 0;
  const watch = new Watch(
    efd.fd.fd,
    READABLE,
    () => {
      calls++;
      efd.read();
    },
    'shared',
  );
  watch.events = 0;
  efd.write(1n);
  await turns();
  assert.equal(calls, 0, 'no callback with no events');
  watch.events = READABLE;
  await turns();
  assert.equal(calls, 1, 'the pending count is reported once events are asked again');

  assert.throws(
    () => new Watch(efd.fd.fd, READABLE, () => {}, 'shared'),
    (err: NodeJS.ErrnoException) => err.code === 'EEXIST' && err.syscall === 'epoll_ctl',
  );
  efd.write(1n);
  await turns();
  assert.equal(calls, 2, 'the first watch still works after the refused one');
  watch.stop();
  watch.stop(); // idempotent
  assert.throws(() => {
    // A stopped watch takes no new events (Watch ignores them; the native call refuses them).
    const id = native.pollShared(efd.fd.fd, READABLE, () => {});
    native.pollSharedStop(id);
    native.pollSharedEvents(id, READABLE);
  }, /stopped/);
  efd.close();
});

test('a shared watch keeps the process alive while ref-ed, not when unref-ed', () => {
  const sys = new URL('../../src/sys/index.js', import.meta.url).href;
  const run = (ref: boolean) =>
    spawnSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `
        const { EventFd } = await import(${JSON.stringify(sys)});
        const efd = new EventFd();
        efd.onReadable(() => { console.log('fired'); efd.close(); }, 'shared');
        ${ref ? '' : 'efd.unref();'}
        // Written by a timer that does not itself keep the process alive: only the watch can.
        setTimeout(() => efd.write(1n), 200).unref();
        `,
      ],
      { encoding: 'utf8', timeout: 10_000 },
    );
  const refed = run(true);
  assert.equal(refed.status, 0, refed.stderr);
  assert.equal(refed.stdout.trim(), 'fired', 'the ref-ed watch held the process until the write');
  const unrefed = run(false);
  assert.equal(unrefed.status, 0, unrefed.stderr);
  assert.equal(unrefed.stdout.trim(), '', 'the unref-ed watch let the process exit before the write');
});

test("a worker's shared watches and its epoll set go with the worker", async () => {
  const before = openFds();
  const epolls = (m: Map<number, string>) =>
    [...m.values()].filter((t) => t === 'anon_inode:[eventpoll]').length;
  const fds: number[] = [];
  for (let i = 0; i < 3; i++) fds.push(native.eventfd(0, 0));
  const worker = new Worker(
    `
    const { workerData, parentPort } = require('node:worker_threads');
    import(workerData.sys).then(({ native, Watch }) => {
      for (const fd of workerData.fds) native.pollShared(fd, 1, () => parentPort.postMessage('fired'));
      parentPort.postMessage('watching');
      // A count arrives while the worker watches: its callbacks fire (and keep firing, nobody drains it).
      native.eventfdWrite(workerData.fds[0], 1);
    });
    `,
    { eval: true, workerData: { sys: new URL('../../src/sys/index.js', import.meta.url).href, fds } },
  );
  assert.equal((await once(worker, 'message'))[0], 'watching');
  assert.equal((await once(worker, 'message'))[0], 'fired', "the worker's shared watch fired");
  const during = epolls(openFds());
  await worker.terminate(); // the watches never stopped
  await turns();
  for (const fd of fds) native.close(fd);
  const afterFds = openFds();
  assert.ok(during > epolls(before), 'the worker had an epoll set of its own');
  assert.deepEqual([...afterFds.keys()].sort(), [...before.keys()].sort(), 'no fd left by the worker');
});

test('eventfds watched shared fire, and close leaving no fd', async () => {
  // The path every lease takes: EventFd.onReadable (shared), close() stops the watch before the fd.
  const before = openFds().size;
  let fired = 0;
  let expected = 0;
  for (let i = 0; i < 200; i++) {
    const efd = EventFd.adopt(new Fd(native.eventfd(0, 0)));
    efd.onReadable(() => fired++, 'shared');
    if (i % 2 === 0) efd.write(1n);
    if (i % 3 === 0) {
      await turns(2);
      if (i % 2 === 0) expected++; // written, then the loop ran: its callback fired
    }
    efd.close();
  }
  await turns();
  assert.equal(fired, expected, 'each watch written and given a loop turn fired once, the others not at all');
  assert.equal(openFds().size, before);
});
