// The lease device's region capability chains are encoded once per broker and handed to every REGION_INFO:
// each caller must get the chain the encoder makes, and its own copy (a reply that changed one must not
// change the next lease's).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  DEVLEASE_INFO_REGION_SUBTYPE,
  DEVLEASE_INFO_REGION_TYPE,
  infoRegionCaps,
  sliceRegionCaps,
} from '../../src/broker/region-caps.js';
import { buildCapChain, regionTypeCap, sparseMmapCap } from '../../src/vfio/uapi/caps.js';

test('slice and info region chains: as encoded, a fresh copy each time', () => {
  for (const size of [4096n, 1n << 21n, 4096n]) {
    const want = buildCapChain([sparseMmapCap([{ offset: 0n, size }])]);
    const got = sliceRegionCaps(size);
    assert.deepEqual(got, want);
    got.fill(0xee);
    assert.deepEqual(sliceRegionCaps(size), want, 'a caller that changed its chain changed nobody else’s');
  }
  const info = buildCapChain([regionTypeCap(DEVLEASE_INFO_REGION_TYPE, DEVLEASE_INFO_REGION_SUBTYPE)]);
  infoRegionCaps().fill(0xee);
  assert.deepEqual(infoRegionCaps(), info);
});
