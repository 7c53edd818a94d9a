// The table of prepared slice fds on its own (src/device/prepared-slices.ts): the cap, and a failed answer,
// which holds no fd and so must not hold one of the cap's places either. The device side is a function that
// answers with real memfds or fails; test/device/prepared-slices.test.ts checks the table through a simulator.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { PreparedSlices } from '../../src/device/prepared-slices.js';
import { type Fd, MemFd } from '../../src/sys/index.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const page = (q: number) => ({ offset: BigInt(q) * 0x10000n, length: 0x10000n });
const answer = async (): Promise<Fd[]> => [MemFd.create('prepared-test', { size: 4096 }).fd];
const refuse = async (): Promise<Fd[]> => {
  throw Object.assign(new Error('device refused'), { code: 'EIO' });
};

test('a failed prepare leaves the table at once: its place under the cap is free again', async () => {
  const t = new PreparedSlices();
  assert.equal(t.prepare(2, [page(0)], 2, answer), true);
  assert.equal(t.prepare(2, [page(1)], 2, refuse), true);
  assert.equal(t.prepare(2, [page(2)], 2, answer), false, 'at the cap of 2');
  await new Promise((r) => setImmediate(r));
  assert.equal(t.size, 1, 'the refused one is gone');
  assert.equal(t.has(2, [page(1)]), false);
  assert.equal(t.prepare(2, [page(2)], 2, answer), true, 'its place is free');
  const fds = await t.take(2, [page(0)]);
  assert.equal(fds?.length, 1, 'the answered one is handed out');
  for (const fd of fds ?? []) fd.close();
  t.clear();
  await new Promise((r) => setImmediate(r));
});

test('held counts an fd once it has arrived; size also counts one on its way (the cap)', async () => {
  const t = new PreparedSlices();
  let answerNow: (fds: Fd[]) => void = () => undefined;
  const later = () => new Promise<Fd[]>((resolve) => (answerNow = resolve));
  assert.equal(t.prepare(2, [page(0)], 4, answer), true);
  assert.equal(t.prepare(2, [page(1)], 4, later), true);
  assert.equal(t.size, 2, 'both count against the cap');
  assert.equal(t.held, 0, 'neither answered yet');
  await new Promise((r) => setImmediate(r));
  assert.equal(t.held, 1, 'the answered one is held, the other is on its way');
  answerNow([MemFd.create('prepared-test', { size: 4096 }).fd]);
  await new Promise((r) => setImmediate(r));
  assert.equal(t.held, 2);
  const fds = await t.take(2, [page(0)]);
  for (const fd of fds ?? []) fd.close();
  assert.equal(t.held, 1, "a taken fd is the grant's, not held here");
  t.clear();
  assert.equal(t.held, 0, 'a dropped one neither');
  await new Promise((r) => setImmediate(r));
});
