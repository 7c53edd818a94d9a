// RequestOrder (src/vfio/user/request-order.ts) on its own: when each request may start, given what is ahead of it.
// The connection tests see the same through a socket; these pin the rules down one by one.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MAX_IN_FLIGHT, RequestOrder, type Turn } from '../../src/vfio/user/request-order.js';

/** A promise and its resolve function. */
function gate(): { open: () => void; opened: Promise<void> } {
  let open!: () => void;
  const opened = new Promise<void>((r) => {
    open = r;
  });
  return { open, opened };
}

/** Let every pending reaction run (a few rounds of microtasks and one macrotask). */
const settle = () => new Promise<void>((r) => setImmediate(r));

test('a request that must wait for every earlier answer waits for a slow pipelined one that a faster one passed', async () => {
  const order = new RequestOrder(Promise.resolve(), () => {});
  const log: string[] = [];
  const slow = gate();
  order.enqueue(true, async (t: Turn) => {
    log.push('A start');
    t.issued?.(); // its device calls are out: the next pipelined request may start
    await slow.opened;
    log.push('A end');
  });
  order.enqueue(true, async () => {
    log.push('B start');
    log.push('B end');
  });
  let cAnswered: Promise<void> | null = null;
  order.enqueue(false, async (t: Turn) => {
    log.push('C start');
    cAnswered = t.answered;
  });
  await settle();
  assert.deepEqual(log, ['A start', 'B start', 'B end'], 'B passed A; C (not pipelined) has not started');
  assert.equal(order.pending, 2, 'A and C: B is done');
  slow.open();
  await order.idle();
  assert.deepEqual(log, ['A start', 'B start', 'B end', 'A end', 'C start']);
  assert.ok(cAnswered, "C's turn had an `answered`");
  await cAnswered;
  assert.equal(order.pending, 0);
  assert.equal(order.clear, true);
});

test('requests that are not pipelined run one at a time, in arrival order; each reply waits for every earlier one', async () => {
  const order = new RequestOrder(Promise.resolve(), () => {});
  const log: string[] = [];
  const gates = [gate(), gate(), gate()];
  const answeredAt: string[] = [];
  for (let i = 0; i < 3; i++) {
    order.enqueue(false, async (t: Turn) => {
      log.push(`${i} start`);
      void t.answered.then(() => answeredAt.push(`${i} may reply`));
      await gates[i]!.opened;
      log.push(`${i} end`);
    });
  }
  await settle();
  assert.deepEqual(log, ['0 start']);
  gates[1]!.open(); // the second's work is ready, but it has not started
  await settle();
  assert.deepEqual(log, ['0 start']);
  gates[0]!.open();
  await settle();
  assert.deepEqual(log, ['0 start', '0 end', '1 start', '1 end', '2 start']);
  gates[2]!.open();
  await order.idle();
  assert.deepEqual(answeredAt, ['0 may reply', '1 may reply', '2 may reply']);
});

test(`a pipelined request waits for the one ${MAX_IN_FLIGHT} before it to be served in the model`, async () => {
  const order = new RequestOrder(Promise.resolve(), () => {});
  const started: number[] = [];
  const first = gate();
  for (let i = 0; i <= MAX_IN_FLIGHT; i++) {
    order.enqueue(true, async (t: Turn) => {
      started.push(i);
      t.issued?.();
      if (i === 0) await first.opened;
      t.served();
    });
  }
  await settle();
  assert.deepEqual(
    started,
    Array.from({ length: MAX_IN_FLIGHT }, (_, i) => i),
    `${MAX_IN_FLIGHT} in the model at once; the next waits for the first`,
  );
  first.open();
  await order.idle();
  assert.equal(started.length, MAX_IN_FLIGHT + 1);
  assert.equal(started[MAX_IN_FLIGHT], MAX_IN_FLIGHT);
});
