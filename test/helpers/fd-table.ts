// A full fd table for tests, made for real: this process's RLIMIT_NOFILE soft limit lowered (prlimit(1) run on
// it: Node has no setrlimit), then every free slot below it taken with dup()s until the kernel says EMFILE.
// Whatever needs a descriptor then fails as it would at the limit — a recvmsg installing SCM_RIGHTS fds among
// them. room(n) frees n slots; restore() frees them all and puts the limit back (a spawn needs pipes, so the
// table is emptied first). Tests use it around a moment of their own, never across one that spawns or opens.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { native } from '../../src/sys/native.js';
import { openFds } from './fds.js';

export interface FullFdTable {
  /** RLIMIT_NOFILE as lowered. */
  readonly limit: number;
  /** Frees `n` of the slots taken (the next n descriptors this process gets). */
  room(n: number): void;
  /** How many slots are free now (counted by taking them, then given back: /proc/self/fd needs one to read). */
  free(): number;
  /** Frees every slot and restores the limit. Idempotent. */
  restore(): void;
}

function setSoftLimit(soft: number | 'unlimited'): void {
  const r = spawnSync('prlimit', [`--pid=${process.pid}`, `--nofile=${soft}:`], { encoding: 'utf8' });
  assert.equal(r.status, 0, `prlimit --nofile=${soft}: ${r.stderr || r.error?.message}`);
}

/** Lowers the limit to a little above the highest fd open, then fills every slot below it. */
export function fillFdTable(): FullFdTable {
  const before = native.nofileLimit();
  const source = native.open('/dev/null', 0); // what the slots are filled with (O_RDONLY)
  const limit = Math.max(...openFds().keys()) + 1 + 32;
  const taken: number[] = [];
  let restored = false;
  const restore = () => {
    if (restored) return;
    restored = true;
    for (const fd of taken.splice(0)) native.close(fd);
    native.close(source);
    setSoftLimit(before < 0 ? 'unlimited' : before);
  };
  /** dup()s `source` into every free slot, until EMFILE. */
  const takeAll = (into: number[]) => {
    for (;;) {
      try {
        into.push(native.dup(source));
      } catch (err) {
        if ((err as { code?: string }).code === 'EMFILE') return;
        throw err;
      }
      assert.ok(into.length <= limit, 'dup() stops at the limit');
    }
  };
  try {
    setSoftLimit(limit);
    assert.equal(native.nofileLimit(), limit, 'the limit was lowered');
    takeAll(taken);
  } catch (err) {
    restore();
    throw err;
  }
  return {
    limit,
    room(n: number) {
      assert.ok(n <= taken.length, `only ${taken.length} slots are taken`);
      for (const fd of taken.splice(0, n)) native.close(fd);
    },
    free() {
      const probe: number[] = [];
      takeAll(probe);
      for (const fd of probe) native.close(fd);
      return probe.length;
    },
    restore,
  };
}
