// A bench run records how this machine's idle CPUs wait (cpuidle driver and governor, the haltpoll driver's poll
// window): control-path rows are made of wake-ups, and on a VM their cost depends on whether an idle vCPU polls or
// halts at once (docs/PERFORMANCE.md, "Issue 16, fourteenth pass" §3). What the results say must be what sysfs says.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { cpuIdle, machine } from '../../bench/run.js';

const read = (path: string): string | null => {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return null;
  }
};

test("the bench's machine record says how idle CPUs wait, as sysfs does (null where the kernel has no such file)", () => {
  const rec = machine().cpuIdle as ReturnType<typeof cpuIdle>;
  assert.deepEqual(rec, cpuIdle());
  assert.equal(rec.driver, read('/sys/devices/system/cpu/cpuidle/current_driver'));
  assert.equal(rec.governor, read('/sys/devices/system/cpu/cpuidle/current_governor'));
  const ns = read('/sys/module/haltpoll/parameters/guest_halt_poll_ns');
  assert.equal(rec.haltPollNs, ns === null ? null : Number(ns));
  if (rec.haltPollNs !== null) assert.ok(Number.isInteger(rec.haltPollNs) && rec.haltPollNs >= 0);
});
