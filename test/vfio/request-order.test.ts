// RequestOrder (src/vfio/user/request-order.ts) on its own: when each request may start, and when its reply may go,
// given what is ahead of it. The connection tests see the same through a socket; these pin the rules down one by one.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MAX_IN_FLIGHT, RequestOrder, type Turn } from '../../src/vfio/user/request-order.js';

/** A promise and the function that resolves it. */
function gate(): { open: () => void; opened: Promise<void> } {
  let open!: () => void;
  const opened = new Promise<void>((r) => {
    open = r;
  });
  return { open, opened };
}

/** The line's `failed`: none of these requests throws. */
const noFailure = (err: unknown) => assert.fail(`no request here fails: ${(err as Error).message}`);

/** Every reaction the requests chain runs first: the microtask queue drains completely before a setImmediate. */
const settle = () => new Promise<void>((r) => setImmediate(r));

test("a request that is not pipelined waits for a slow pipelined one that a faster one passed; the faster one's reply waits too", async () => {
  const order = new RequestOrder(Promise.resolve(), () => {}, noFailure);
  const log: string[] = [];
  const slow = gate();
  order.enqueue(true, async (t: Turn) => {
    log.push('A start');
    t.issued?.(); // its device calls are out: the next pipelined request may start
    await slow.opened;
    log.push('A end');
  });
  order.enqueue(true, async (t: Turn) => {
    log.push('B start');
    void t.answered.then(() => log.push('B may reply'));
    log.push('B end');
  });
  order.enqueue(false, async () => {
    log.push('C start');
  });
  await settle();
  assert.deepEqual(log, ['A start', 'B start', 'B end'], 'B passed A; its reply and C (not pipelined) wait');
  assert.equal(order.pending, 2, 'A and C: B is done');
  slow.open();
  await order.idle();
  assert.deepEqual(log, ['A start', 'B start', 'B end', 'A end', 'B may reply', 'C start']);
  assert.equal(order.pending, 0);
  assert.equal(order.clear, true);
});

test('requests that are not pipelined run one at a time, in arrival order', async () => {
  const order = new RequestOrder(Promise.resolve(), () => {}, noFailure);
  const log: string[] = [];
  const gates = [gate(), gate(), gate()];
  for (let i = 0; i < 3; i++) {
    order.enqueue(false, async () => {
      log.push(`${i} start`);
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
  assert.equal(order.pending, 0);
});

test(`a pipelined request waits for the one ${MAX_IN_FLIGHT} before it to be served in the model, not to end`, async () => {
  const order = new RequestOrder(Promise.resolve(), () => {}, noFailure);
  const log: string[] = [];
  const serve = gate();
  const end = gate();
  for (let i = 0; i <= MAX_IN_FLIGHT; i++) {
    order.enqueue(true, async (t: Turn) => {
      log.push(`${i} start`);
      t.issued?.();
      if (i === 0) {
        await serve.opened;
        t.served(); // done in the model; its reply still waits below
        await end.opened;
        log.push('0 end');
      }
    });
  }
  await settle();
  const first = Array.from({ length: MAX_IN_FLIGHT }, (_, i) => `${i} start`);
  assert.deepEqual(log, first, `${MAX_IN_FLIGHT} in the model at once; the next waits for the first`);
  serve.open();
  await settle();
  assert.deepEqual(
    log,
    [...first, `${MAX_IN_FLIGHT} start`],
    'it starts once the first is served, before it ends',
  );
  end.open();
  await order.idle();
  assert.deepEqual(log.at(-1), '0 end');
  assert.equal(order.pending, 0);
});

/** A line whose `failed` records each failure's message, and a log for the requests to write to. */
function reportingLine(): { order: RequestOrder; failures: string[]; log: string[] } {
  const failures: string[] = [];
  const order = new RequestOrder(
    Promise.resolve(),
    () => {},
    (err) => failures.push((err as Error).message),
  );
  return { order, failures, log: [] };
}

test('a request whose handling throws is reported, and the line goes on: the requests behind it run, after() runs, idle() resolves', async () => {
  const { order, failures, log } = reportingLine();
  // Served out of line (nothing was ahead of it), its model answering later; then its reply's finish throws.
  order.inFlight(Promise.resolve('outcome'), () => {
    throw new Error('a model whose sent() threw');
  });
  order.enqueue(false, async () => {
    throw new Error('a reply that could not be built');
  });
  order.enqueue(true, async (t: Turn) => {
    t.issued?.();
    log.push('pipelined');
  });
  order.enqueue(false, async () => {
    log.push('next');
  });
  order.after(async () => {
    log.push('after (a close)');
  });
  order.enqueue(false, async () => {
    log.push('behind the close');
  });
  let timer: NodeJS.Timeout | undefined;
  const stuck = new Promise<string>((r) => {
    timer = setTimeout(r, 2000, 'stuck');
  });
  try {
    const idle = order.idle().then(() => 'idle');
    assert.equal(await Promise.race([idle, stuck]), 'idle', 'every request is answered: none is stranded');
  } finally {
    clearTimeout(timer);
  }
  assert.deepEqual(failures, ['a model whose sent() threw', 'a reply that could not be built']);
  assert.deepEqual(log, ['pipelined', 'next', 'after (a close)', 'behind the close']);
  assert.equal(order.pending, 0, "each failed request's pending is counted off");
  assert.equal(order.clear, true);
});

test('a request served out of line whose outcome rejects is reported and counted off; the pipelined request behind it still runs', async () => {
  const { order, failures, log } = reportingLine();
  order.inFlight(Promise.reject(new Error('an outcome that rejected')), () => log.push('finished'));
  order.enqueue(true, async (t: Turn) => {
    t.issued?.();
    log.push('pipelined');
  });
  await order.idle();
  assert.deepEqual(failures, ['an outcome that rejected']);
  assert.deepEqual(log, ['pipelined'], 'no reply for it; the next request ran');
  assert.equal(order.pending, 0);
});
