// TableFdBudget (src/broker/audit-scan/file-tables.ts): what a scan lists of one process's threads' own file
// tables, entry by entry, and charges. The listings are counted outside it (test/helpers/dir-listing.ts).
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { TableFdBudget, TableFdsSpent } from '../../src/broker/audit-scan/file-tables.js';
import { countingListings } from '../helpers/dir-listing.js';

/** A directory of ENTRIES files, standing in for a table's fd/ (list() reads any directory). */
const ENTRIES = 50;
let dir = '';
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'devlease-budget-'));
  for (let i = 0; i < ENTRIES; i++) closeSync(openSync(join(dir, String(i)), 'w'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

const inDir = (path: string) => path === dir;

test('budget: a listing is charged its entries; over what is left, it stops one entry past and the rest is spent', () => {
  const b = new TableFdBudget(ENTRIES + 10);
  const whole = countingListings(inDir, () => b.list(dir));
  assert.equal(whole.result.length, ENTRIES);
  assert.equal(b.left, 10, 'charged every entry');
  let spent: unknown;
  const over = countingListings(inDir, () => {
    try {
      b.list(dir);
    } catch (err) {
      spent = err;
    }
  });
  assert.ok(spent instanceof TableFdsSpent && !spent.never, 'over what is left, not over a whole budget');
  assert.equal(over.listed, 11, 'the 10 left and one more listed, not the table');
  assert.equal(b.left, 0);
  const none = countingListings(inDir, () => assert.throws(() => b.list(dir), TableFdsSpent));
  assert.equal(none.listed, 0, 'nothing left: not listed at all (the next scan reads it)');
});

test('budget: entries listed before the listing fails (a thread exiting mid-listing: ENOENT) are charged', () => {
  // Charged after the loop only, a table whose thread exited part way cost the scan its entries free of charge.
  const b = new TableFdBudget(ENTRIES + 10);
  const cut = countingListings(inDir, () => assert.throws(() => b.list(dir), { code: 'ENOENT' }), 20);
  assert.equal(cut.listed, 20);
  assert.equal(b.left, ENTRIES + 10 - 20, 'the 20 entries listed before the error charged');
});
