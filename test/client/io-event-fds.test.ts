// A lease asks the device for a region's ioeventfds once and keeps the answer (io-event-fds.ts); a request that
// failed is not kept: one passing failure (an ENOMEM on the way) must not make every later queue of the lease
// fail. The device side is a stand-in for VfioUserClient.regionIoFds: what is checked is the cache's rule.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IoEventFds } from '../../src/client/io-event-fds.js';
import { Fd, native } from '../../src/sys/index.js';
import type { VfioUserClient } from '../../src/vfio/user/client.js';

const { EFD_NONBLOCK } = native.constants as Record<string, number>;

test('a failed ioeventfd request is asked again; a successful one is kept', async () => {
  let asked = 0;
  const client = {
    regionIoFds: async () => {
      asked++;
      if (asked === 1) throw Object.assign(new Error('cannot allocate memory'), { code: 'ENOMEM' });
      return {
        subRegions: [{ offset: 0n, size: 4n, fdIndex: 0 }],
        fds: [new Fd(native.eventfd(0, EFD_NONBLOCK!))],
      };
    },
  } as unknown as VfioUserClient;
  const fds = new IoEventFds(client, () => false);
  await assert.rejects(fds.get(2, 0), 'the first ask fails');
  const fd = await fds.get(2, 0);
  assert.ok(fd && !fd.closed, 'asked again after the failure');
  assert.equal(await fds.get(2, 0), fd, 'kept once it succeeded');
  assert.equal(asked, 2);
  fds.closeAll();
  await new Promise((r) => setImmediate(r));
  assert.ok(fd.closed, 'closed with the lease');
});
