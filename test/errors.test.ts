// The one error model (src/errors.ts): errno numbers are the host's own
// (os.constants.errno, no typed-in table), errors from the addon are the same
// classes as errors from TypeScript, and a refusal's reason travels as a field
// from where it is raised (here: the SA-1 device worker) over the vfio-user
// wire to the client, never re-parsed from message text.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  DevleaseError,
  ERRNO,
  errnoName,
  errnoNumber,
  MisuseError,
  ProtocolError,
  SysError,
  VfioError,
  VfioUserCallError,
} from '../src/errors.js';
import { startSimulator } from '../src/sim/index.js';
import { EventFd, MemFd } from '../src/sys/index.js';
import { native } from '../src/sys/native.js';
import { VfioUserClient } from '../src/vfio/user/client.js';
import { VFIO_USER_F_DMA_REGION_READ, VFIO_USER_F_DMA_REGION_WRITE } from '../src/vfio/user/protocol.js';
import { assertNoFdLeak } from './helpers/fds.js';

test('errno numbers are os.constants.errno, for every name, both ways', () => {
  const host = constants.errno as Record<string, number>;
  assert.ok(Object.keys(host).length > 50, 'os.constants.errno lists the host errnos');
  for (const [name, n] of Object.entries(host)) {
    assert.equal((ERRNO as Record<string, number>)[name], n, name);
    assert.equal(errnoNumber(name), n, name);
    assert.equal(errnoNumber(errnoName(n)), n, `${name}: errnoName(${n}) names the same number`);
  }
  assert.equal(errnoNumber('ENOTANERRNO'), undefined);
  assert.equal(errnoNumber('toString'), undefined, 'no Object.prototype member is an errno');
  assert.equal(errnoName(99_999), 'E99999');
  for (const code of [
    'EINVAL',
    'EEXIST',
    'EMSGSIZE',
    'ENOTSUP',
    'ETIMEDOUT',
    'ECANCELED',
    'EPROTO',
  ] as const) {
    const e = new VfioError(code, 'why');
    assert.equal(e.errno, host[code], code);
    assert.equal(e.reason, 'why');
    assert.equal(e.message, `${code}: why`);
  }
  assert.equal(new ProtocolError('bad frame').errno, host.EPROTO);
  assert.equal(new SysError('sendmsg', 'EPIPE').errno, host.EPIPE);
  assert.throws(() => new VfioError('ENOTANERRNO', 'why', 0), RangeError);
});

test('the addon throws the same classes: SysError for a failed syscall, MisuseError for misuse', () => {
  using efd = new EventFd();
  const sys = (() => {
    try {
      native.ftruncate(efd.fd.fd, 10);
    } catch (err) {
      return err;
    }
    assert.fail('ftruncate of an eventfd must fail');
  })();
  assert.ok(sys instanceof SysError, `a native syscall failure is a SysError (got ${String(sys)})`);
  assert.ok(sys instanceof DevleaseError);
  assert.equal(sys.code, 'EINVAL');
  assert.equal(sys.errno, constants.errno.EINVAL);
  assert.equal(sys.syscall, 'ftruncate');
  assert.equal(sys.message, 'ftruncate: Invalid argument');

  const mis = (() => {
    try {
      native.ftruncate('not an fd' as unknown as number, 10);
    } catch (err) {
      return err;
    }
    assert.fail('a string fd must be refused');
  })();
  assert.ok(mis instanceof MisuseError, `native misuse is a MisuseError (got ${String(mis)})`);
  assert.ok(mis instanceof DevleaseError);
  assert.equal(mis.code, 'ERR_DEVLEASE_INVALID_ARG');
  assert.equal(mis.errno, undefined);
});

test("a refusal's reason crosses the device worker and the wire as a field, code and errno intact", async () => {
  await assertNoFdLeak(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'devlease-errors-'));
    const socketPath = join(dir, 'sa1.sock');
    const sim = await startSimulator({
      socketPath,
      numQueues: 2,
      devmemSize: 1 << 20,
      devmemGranule: 1 << 16,
    });
    let client: VfioUserClient | undefined;
    using memfd = MemFd.create('errors-test', { size: 0x10000 });
    try {
      client = await VfioUserClient.connect(socketPath, {
        timeoutMs: 30_000,
        capabilities: { devlease: { error_reason: true } },
      });
      const flags = VFIO_USER_F_DMA_REGION_READ | VFIO_USER_F_DMA_REGION_WRITE;
      await client.dmaMap({ fd: memfd.fd, iova: 0x100000n, size: 0x10000n, flags });
      // The overlap is refused by the device model inside the worker thread (Iommu.checkFree).
      const err = await client
        .dmaMap({ fd: memfd.fd, iova: 0x100000n, size: 0x10000n, flags })
        .then(() => assert.fail('an overlapping DMA map must be refused'))
        .catch((e: unknown) => e);
      assert.ok(err instanceof VfioUserCallError, `got ${String(err)}`);
      assert.ok(err instanceof DevleaseError);
      assert.equal(err.code, 'EEXIST');
      assert.equal(err.errno, constants.errno.EEXIST);
      assert.equal(err.reason, 'DMA map [0x100000, +0x10000) overlaps the map at 0x100000');
    } finally {
      client?.close();
      await sim.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
