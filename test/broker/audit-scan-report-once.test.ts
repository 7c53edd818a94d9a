// The rule of rounds (src/broker/audit-scan/report-once.ts): an fd finding of a process read in part is kept
// until a whole round of its walk of file tables (file-tables.ts: TableCursors) has passed without it. The places
// in the rounds come from TableCursors, given the walks a process of this test's making would have done.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TableCursors, type TableWalk } from '../../src/broker/audit-scan/file-tables.js';
import { startTimeOf } from '../../src/broker/audit-scan/process-facts.js';
import { ReportOnce } from '../../src/broker/audit-scan/report-once.js';

/** This process stands in for the one walked: its pid and start time key the finding. */
const pid = process.pid;
const start = () => startTimeOf(pid);

/** One scan: `pid` walked as `w` from its cursor; the finding seen or not. Whether it was recorded (first seen). */
function scan(cursors: TableCursors, reported: ReportOnce, w: TableWalk, seen: boolean): boolean {
  cursors.begin();
  const at = cursors.from(pid, start);
  const place = cursors.walked(pid, at, w, start);
  cursors.commit();
  reported.beginScan(new Map([[pid, place]]));
  const first = seen && reported.firstSeen(pid, 'fd-kept', 'l1') !== false;
  reported.endScan();
  return first;
}

const stopped: TableWalk = { done: false, next: 1000, restarted: false, unread: 0 };
/** Threads exited below the cursor: the walk started over at the first, and stopped at the bound again. */
const restarted: TableWalk = { done: false, next: 1000, restarted: true, unread: 0 };
const kept = (reported: ReportOnce) => reported.keys().some((k) => k.startsWith(`${pid}@`));

test('rule of rounds: a round ended by a restart counts as over, so a finding gone a whole such round is forgotten', () => {
  // A process shrinking under the cursor at every round: no window reaches its last thread (never `ended`).
  const cursors = new TableCursors();
  const reported = new ReportOnce();
  assert.equal(scan(cursors, reported, stopped, true), true, 'recorded in round 0');
  assert.equal(scan(cursors, reported, restarted, false), false);
  assert.ok(kept(reported), 'round 1 began: kept until it is over');
  assert.equal(scan(cursors, reported, restarted, false), false);
  assert.ok(!kept(reported), 'round 1 ended by the restart: a whole round passed without it, forgotten');
  assert.equal(scan(cursors, reported, restarted, true), true, 'its return recorded again');
});

test('rule of rounds: a finding seen within the round since is kept, whether rounds end at the last thread or by a restart', () => {
  const cursors = new TableCursors();
  const reported = new ReportOnce();
  const last: TableWalk = { done: true, next: 0, restarted: false, unread: 0 };
  assert.equal(scan(cursors, reported, stopped, true), true); // round 0
  assert.equal(scan(cursors, reported, last, false), false); // round 0 over: last seen in it, kept
  assert.ok(kept(reported));
  assert.equal(scan(cursors, reported, stopped, true), false, 'seen again in round 1: the one finding'); // round 1
  assert.equal(scan(cursors, reported, restarted, false), false); // round 2 (round 1 ended by the restart)
  assert.ok(kept(reported), 'last seen in round 1, the round over: kept until round 2 is');
});

test('audit-incomplete outlasts one scan reading the process whole: a process read whole and in part by turns is recorded once', () => {
  // A thread count moving about the bound (~1,026 threads): forgotten at each whole read, the key was recorded
  // anew about every other scan.
  const reported = new ReportOnce();
  const place = new Map([[pid, { start: start(), round: 0, ended: true }]]);
  /** One scan; `inPart`: the process read in part (its `incomplete` seen). Whether it was recorded. */
  const scanOnce = (inPart: boolean) => {
    reported.beginScan(inPart ? place : new Map());
    const first = inPart && reported.firstSeen(pid, 'incomplete', 'l1') !== false;
    reported.endScan();
    return first;
  };
  const recorded = [true, false, true, false, true, false, true].map(scanOnce);
  assert.deepEqual(recorded, [true, false, false, false, false, false, false], 'recorded once');
  scanOnce(false);
  scanOnce(false);
  assert.equal(scanOnce(true), true, 'two whole reads in a row: read in part again is recorded again');
});
