// Which state version an upgrade writes (src/broker/handover/format.ts): the lowest that a reader can take
// without misreading it. A reader that does not list the version in its hello is not sent the state.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  KERNEL_AUDITED_STATE_VERSION,
  KERNEL_STATE_VERSION,
  READABLE_VERSIONS,
  RELAYED_DMA_STATE_VERSION,
  SLICE_COUNT_LOST_STATE_VERSION,
  STATE_VERSION,
  stateVersionFor,
} from '../../src/broker/handover/format.js';

const vfioUser = { transport: 'vfio-user' };
const kernel = { transport: 'kernel-iommufd' };

test('the state version: 3 / 4 / 5 by device, 6 with a lost release count, 7 with relayed DMA maps; all readable', () => {
  assert.equal(stateVersionFor(vfioUser), STATE_VERSION);
  assert.equal(stateVersionFor(kernel), KERNEL_STATE_VERSION);
  assert.equal(stateVersionFor(kernel, true), KERNEL_AUDITED_STATE_VERSION);
  assert.equal(stateVersionFor(vfioUser, false, true), SLICE_COUNT_LOST_STATE_VERSION);
  // Relayed maps (memory without an fd, device maps handed over with fd -1): a reader of 6 would look for an fd.
  assert.equal(stateVersionFor(vfioUser, false, false, true), RELAYED_DMA_STATE_VERSION);
  assert.equal(
    stateVersionFor(vfioUser, false, true, true),
    RELAYED_DMA_STATE_VERSION,
    '7 holds what 6 holds',
  );
  assert.equal(RELAYED_DMA_STATE_VERSION, 7);
  assert.deepEqual(READABLE_VERSIONS, [1, 2, 3, 4, 5, 6, 7]);
});
