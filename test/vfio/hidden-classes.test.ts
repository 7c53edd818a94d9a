// The decoders a lease's requests run build each result with one hidden class for every call. On Node 20 an
// object literal that starts with a spread and adds a property gets a new one almost every time, which leaves
// a map in the old generation per call and sends the code reading these objects down V8's megamorphic path
// (docs/performance-history.md, issue 16, twenty-fourth pass §4).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';

test('parsed capabilities, REGION_IO_FDS replies and lease requests keep one hidden class, call after call', () => {
  const caps = new URL('../../src/vfio/uapi/caps.js', import.meta.url).href;
  const ioFds = new URL('../../src/vfio/user/region-io-fds.js', import.meta.url).href;
  const leaseRequest = new URL('../../src/broker/lease-request.js', import.meta.url).href;
  // V8's own check (%HaveSameMap), in a child with natives syntax on.
  const script = `
    const { buildCapChain, parseCapBlob, sparseMmapCap } = await import(${JSON.stringify(caps)});
    const { decodeRegionIoFdsReply, encodeRegionIoFdsReply } = await import(${JSON.stringify(ioFds)});
    const { readLeaseRequest } = await import(${JSON.stringify(leaseRequest)});
    const sameMaps = (make) => {
      let same = 0;
      let prev = make(0);
      for (let i = 1; i < 200; i++) {
        const o = make(i);
        if (%HaveSameMap(o, prev)) same++;
        prev = o;
      }
      return same;
    };
    const chain = buildCapChain([sparseMmapCap([{ offset: 4096n, size: 4096n }])]);
    const reply = encodeRegionIoFdsReply(2, 4096, { subRegions: [], fds: [] }, 8).payload;
    console.log(JSON.stringify({
      caps: sameMaps(() => parseCapBlob(chain)[0]),
      ioFds: sameMaps(() => decodeRegionIoFdsReply(reply)),
      // Each from its own JSON.parse, as each VERSION's capabilities are; a request without 'kind'.
      leaseRequest: sameMaps((i) =>
        readLeaseRequest(JSON.parse('{"devlease":{"request":{"devmemGranules":' + (i % 3) + ',"tag":"t"}}}'), 'queue'),
      ),
    }));`;
  const out = execFileSync(
    process.execPath,
    ['--allow-natives-syntax', '--input-type=module', '-e', script],
    {
      encoding: 'utf8',
      timeout: 30_000,
    },
  );
  assert.deepEqual(
    JSON.parse(out),
    { caps: 199, ioFds: 199, leaseRequest: 199 },
    'of 199 calls, how many kept the map of the one before',
  );
});
