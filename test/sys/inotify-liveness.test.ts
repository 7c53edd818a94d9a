// An Inotify keeps the event loop alive exactly while it has watches: with
// none left its poll handle stays (so a broker watching one lease at a time
// does not stop and make it again per lease) but the process can exit, and
// a watch added again holds the process until its event comes.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';

const SYS = new URL('../../src/sys/index.js', import.meta.url).href;

/** The child's start: a file to watch, an Inotify, IN_MODIFY as `native.constants` has it. */
const CHILD_SETUP = `import { mkdtempSync, writeFileSync } from 'node:fs';
  import { tmpdir } from 'node:os';
  import { join } from 'node:path';
  const { Inotify, native } = await import(${JSON.stringify(SYS)});
  const file = join(mkdtempSync(join(tmpdir(), 'inotify-')), 'f');
  writeFileSync(file, 'x');
  const ino = new Inotify();`;

/** Runs `body` as an ES module in a child Node; resolves with its exit code and stdout, or rejects at `ms`. */
function runChild(body: string, ms: number): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', body], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the child did not exit within ${ms} ms (stdout: ${JSON.stringify(out)})`));
    }, ms);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

test('an Inotify whose watches are all gone does not keep the process alive', async () => {
  const r = await runChild(
    `${CHILD_SETUP}
     const wd = ino.watch(file, native.constants.IN_MODIFY, () => {});
     ino.unwatch(wd);
     process.stdout.write('unwatched');`,
    20_000,
  );
  assert.deepEqual(
    [r.code, r.out],
    [0, 'unwatched'],
    'the child exits on its own once its last watch is gone',
  );
});

test('a watch added after the last one went holds the process until its event comes', async () => {
  const r = await runChild(
    `${CHILD_SETUP}
     ino.unwatch(ino.watch(file, native.constants.IN_MODIFY, () => {}));
     const wd = ino.watch(file, native.constants.IN_MODIFY, () => {
       process.stdout.write('event');
       ino.unwatch(wd);
     });
     // Only the watch can keep this process alive until the write (an unref'd timer does not).
     setTimeout(() => writeFileSync(file, 'y'), 300).unref();`,
    20_000,
  );
  assert.deepEqual([r.code, r.out], [0, 'event'], 'the watch kept the child alive until its event');
});
