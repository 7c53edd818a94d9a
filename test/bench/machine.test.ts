// A bench run records how the machine's idle CPUs wait: control-path rows are made of wake-ups, and on a VM their
// cost depends on whether an idle vCPU polls or halts at once (docs/performance-history.md, "Issue 16, fourteenth pass"
// §3). Read from a sysfs tree of the test's own, so every case is exercised whatever machine runs it.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { cpuIdle, machine } from '../../bench/run.js';

const roots: string[] = [];
after(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});

/** A sysfs tree holding `files` (paths under it → contents). */
function sysTree(files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'devlease-sysfs-'));
  roots.push(root);
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), text);
  }
  return root;
}

const CPUIDLE = 'devices/system/cpu/cpuidle';
const POLL_NS = 'module/haltpoll/parameters/guest_halt_poll_ns';

/** Each case: a sysfs tree, and what cpuIdle() must say of it. */
const CASES: { name: string; files: Record<string, string>; want: ReturnType<typeof cpuIdle> }[] = [
  {
    name: 'a guest under the haltpoll governor: its driver, its governor and its longest poll window',
    files: {
      [`${CPUIDLE}/current_driver`]: 'haltpoll\n',
      [`${CPUIDLE}/current_governor`]: 'haltpoll\n',
      [POLL_NS]: '200000\n',
      'module/haltpoll/parameters/guest_halt_poll_grow_start': '50000\n',
    },
    want: { driver: 'haltpoll', governor: 'haltpoll', haltPollNs: 200000 },
  },
  {
    name: 'another governor: no poll window, even where the haltpoll parameter exists (built in, unused)',
    files: {
      [`${CPUIDLE}/current_driver`]: 'intel_idle\n',
      [`${CPUIDLE}/current_governor`]: 'menu\n',
      [POLL_NS]: '200000\n',
    },
    want: { driver: 'intel_idle', governor: 'menu', haltPollNs: null },
  },
  {
    name: 'an older kernel (current_governor_ro only), and a window that is not a number',
    files: {
      [`${CPUIDLE}/current_driver`]: 'haltpoll\n',
      [`${CPUIDLE}/current_governor_ro`]: 'haltpoll\n',
      [POLL_NS]: 'many\n',
    },
    want: { driver: 'haltpoll', governor: 'haltpoll', haltPollNs: null },
  },
  { name: 'no cpuidle at all', files: {}, want: { driver: null, governor: null, haltPollNs: null } },
];

for (const c of CASES) {
  test(c.name, () => {
    assert.deepEqual(cpuIdle(sysTree(c.files)), c.want);
  });
}

test("the run's machine record carries this machine's", () => {
  assert.deepEqual(machine().cpuIdle, cpuIdle());
});
