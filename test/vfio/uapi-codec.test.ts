// Pure encode/decode tests for the uapi helpers: capability chains as the
// kernel lays them out, and the variable-length ioctl arguments.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  buildCapChain,
  decodeDeviceFeature,
  decodeDmaAvailCap,
  decodeDmaBufPayload,
  decodeDmaBufRevokePayload,
  decodeIommuIovaRanges,
  decodeIovaRangeCap,
  decodeIrqSet,
  decodeRegionTypeCap,
  decodeSparseMmapCap,
  dmaAvailCap,
  encodeDeviceFeature,
  encodeDmaBufFeature,
  encodeDmaBufRevokeFeature,
  encodeIommuIovaRanges,
  encodeIrqSet,
  findCap,
  iovaRangeCap,
  parseCapBlob,
  parseCapChain,
  rebaseCapChain,
  regionTypeCap,
  sparseMmapCap,
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG_CAPS,
  vfio_info_cap_header,
  vfio_iommu_type1_info,
  vfio_irq_set,
  vfio_region_info,
} from '../../src/vfio/uapi/index.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/** A region info reply as a server would build it: fixed part, then the chain at cap_offset. */
function regionInfoWithCaps(chain: Uint8Array): Uint8Array {
  const argsz = vfio_region_info.size + chain.byteLength;
  const buf = new Uint8Array(argsz);
  vfio_region_info.encode(
    { argsz, flags: VFIO_REGION_INFO_FLAG_CAPS, index: 2, cap_offset: vfio_region_info.size, size: 0x10000n },
    buf,
  );
  buf.set(chain, vfio_region_info.size);
  return buf;
}

test('a built chain parses back: ids, versions, offsets and payloads', () => {
  const areas = [
    { offset: 0x1000n, size: 0x1000n },
    { offset: 0x8000n, size: 0x4000n },
  ];
  const base = vfio_region_info.size;
  const info = regionInfoWithCaps(buildCapChain([sparseMmapCap(areas), regionTypeCap(0x80001af4, 7)], base));
  const hdr = vfio_region_info.decode(info);
  const caps = parseCapChain(info.subarray(0, hdr.argsz), hdr.cap_offset);

  assert.deepEqual(
    caps.map(({ id, version, offset }) => ({ id, version, offset })),
    [
      { id: VFIO_REGION_INFO_CAP_SPARSE_MMAP, version: 1, offset: 32 },
      // sparse cap: 16-byte fixed part + 2 × 16-byte areas
      { id: VFIO_REGION_INFO_CAP_TYPE, version: 1, offset: 32 + 48 },
    ],
  );
  assert.deepEqual(decodeSparseMmapCap(findCap(caps, VFIO_REGION_INFO_CAP_SPARSE_MMAP)!.bytes), areas);
  assert.deepEqual(decodeRegionTypeCap(findCap(caps, VFIO_REGION_INFO_CAP_TYPE)!.bytes), {
    type: 0x80001af4,
    subtype: 7,
  });
  // The last header ends the chain.
  assert.equal(vfio_info_cap_header.decode(info, 80).next, 0);
  assert.equal(findCap(caps, 99), undefined);
});

test('capabilities are padded to 8 bytes so the next one stays aligned', () => {
  // dma_avail is 12 bytes; the iova range cap after it must start on 8.
  const chain = buildCapChain([dmaAvailCap(65535), iovaRangeCap([{ start: 0n, end: 0xfedfffffn }])], 24);
  const info = new Uint8Array(vfio_iommu_type1_info.size + chain.byteLength);
  vfio_iommu_type1_info.encode({ argsz: info.byteLength, cap_offset: 24 }, info);
  info.set(chain, 24);
  const caps = parseCapChain(info, vfio_iommu_type1_info.decode(info).cap_offset);
  assert.deepEqual(
    caps.map((c) => c.offset),
    [24, 40],
  );
  assert.equal(decodeDmaAvailCap(findCap(caps, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL)!.bytes), 65535);
  assert.deepEqual(decodeIovaRangeCap(findCap(caps, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE)!.bytes), [
    { start: 0n, end: 0xfedfffffn },
  ]);
});

test('cap_offset 0 means no capabilities; an empty blob is an empty chain', () => {
  const info = vfio_region_info.encode({ argsz: vfio_region_info.size });
  assert.deepEqual(parseCapChain(info, 0), []);
  assert.deepEqual(parseCapBlob(new Uint8Array(0)), []);
  assert.equal(buildCapChain([]).byteLength, 0);
});

test('a base-0 blob rebased equals the chain built in place', () => {
  const caps = [sparseMmapCap([{ offset: 0n, size: 0x1000n }]), regionTypeCap(1, 2)];
  const blob = buildCapChain(caps);
  assert.deepEqual(
    parseCapBlob(blob).map((c) => c.offset),
    [0, 32],
  );
  assert.equal(hex(rebaseCapChain(blob, 32)), hex(buildCapChain(caps, 32)));
  // Rebasing copies: the blob keeps its own links.
  assert.equal(vfio_info_cap_header.decode(blob, 0).next, 32);
});

test('malformed chains are refused with the reason', () => {
  const loop = new Uint8Array(32);
  vfio_info_cap_header.encode({ id: 1, version: 1, next: 16 }, loop, 16);
  assert.throws(() => parseCapChain(loop, 16), { name: 'RangeError', message: /loops back to offset 16/ });

  const overrun = new Uint8Array(32);
  vfio_info_cap_header.encode({ id: 1, version: 1, next: 28 }, overrun, 16);
  assert.throws(() => parseCapChain(overrun, 16), { name: 'RangeError', message: /offset 28 overruns/ });

  const overlap = new Uint8Array(40);
  vfio_info_cap_header.encode({ id: 1, version: 1, next: 20 }, overlap, 16);
  assert.throws(() => parseCapChain(overlap, 16), { name: 'RangeError', message: /overlap/ });

  // A sparse cap claiming more areas than its bytes hold.
  const lying = sparseMmapCap([{ offset: 0n, size: 4096n }]).bytes;
  new DataView(lying.buffer).setUint32(8, 5, true);
  assert.throws(() => decodeSparseMmapCap(lying), {
    name: 'RangeError',
    message: /5 × vfio_region_sparse_mmap_area/,
  });

  assert.throws(
    () => buildCapChain([{ id: 1, version: 1, bytes: new Uint8Array(4) }]),
    /less than its 8-byte header/,
  );
  assert.throws(() => buildCapChain([regionTypeCap(1, 1)], 12), /not 8-byte aligned/);
});

test('irq_set with eventfds: exact kernel bytes and a round trip', () => {
  const buf = encodeIrqSet({
    index: VFIO_PCI_MSIX_IRQ_INDEX,
    start: 1,
    action: 'trigger',
    data: { kind: 'eventfd', fds: [7, -1] },
  });
  // argsz=28 flags=DATA_EVENTFD|ACTION_TRIGGER index=2 start=1 count=2, then s32 7, s32 -1.
  assert.equal(hex(buf), `1c000000${'24000000'}02000000${'01000000'}02000000${'07000000'}ffffffff`);
  assert.equal(vfio_irq_set.decode(buf).flags, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER);
  assert.deepEqual(decodeIrqSet(buf), {
    argsz: 28,
    flags: 0x24,
    index: 2,
    start: 1,
    count: 2,
    action: 'trigger',
    kind: 'eventfd',
    fds: [7, -1],
  });
});

test('irq_set with bools, with no data, and in vfio-user form (fds out of band)', () => {
  const bools = decodeIrqSet(
    encodeIrqSet({ index: 0, start: 0, action: 'mask', data: { kind: 'bool', values: [true, false, true] } }),
  );
  assert.equal(bools.argsz, 23);
  assert.deepEqual(bools.values, [true, false, true]);
  assert.equal(bools.action, 'mask');

  const none = decodeIrqSet(
    encodeIrqSet({ index: 1, start: 0, action: 'unmask', data: { kind: 'none', count: 4 } }),
  );
  assert.deepEqual([none.kind, none.count, none.argsz, none.action], ['none', 4, 20, 'unmask']);

  // vfio-user sends only the fixed part; the eventfds ride as SCM_RIGHTS.
  const wire = vfio_irq_set.encode({
    argsz: 20,
    flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
    index: 2,
    count: 3,
  });
  const d = decodeIrqSet(wire);
  assert.equal(d.kind, 'eventfd');
  assert.equal(d.count, 3);
  assert.equal(d.fds, undefined);

  const bad = vfio_irq_set.encode({ argsz: 20, flags: 0x1 | 0x8 | 0x10 });
  assert.throws(() => decodeIrqSet(bad), { name: 'RangeError', message: /no single action/ });
  // Inline data present but cut short (one fd of two).
  const short = new Uint8Array(24);
  vfio_irq_set.encode({ argsz: 24, flags: 0x4 | 0x20, count: 2 }, short);
  assert.throws(() => decodeIrqSet(short), /2 eventfds need 8 bytes, have 4/);
});

test('dma-buf feature: header, payload and ranges round trip', () => {
  const ranges = [
    { offset: 0x3000n, length: 0x1000n },
    { offset: 0x10000n, length: 0x20000n },
  ];
  const buf = encodeDmaBufFeature({ region_index: 4, open_flags: 0o2000002, ranges });
  assert.equal(buf.byteLength, 8 + 16 + 2 * 16);
  const f = decodeDeviceFeature(buf);
  assert.deepEqual(
    [f.argsz, f.feature, f.get, f.set, f.probe],
    [56, VFIO_DEVICE_FEATURE_DMA_BUF, true, false, false],
  );
  assert.equal(f.flags, VFIO_DEVICE_FEATURE_GET | 11);
  assert.deepEqual(decodeDmaBufPayload(f.data), { region_index: 4, open_flags: 0o2000002, flags: 0, ranges });

  const truncated = f.data.slice(0, 16 + 16);
  assert.throws(() => decodeDmaBufPayload(truncated), /2 × vfio_region_dma_range need 48 bytes, have 32/);
});

test('device feature framing: probe with no data, revoke payload, short argsz', () => {
  const probe = decodeDeviceFeature(
    encodeDeviceFeature(VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET | 11),
  );
  assert.deepEqual([probe.argsz, probe.probe, probe.get, probe.data.byteLength], [8, true, true, 0]);

  const revoke = decodeDeviceFeature(encodeDmaBufRevokeFeature(3));
  assert.equal(revoke.feature, VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE);
  assert.ok(revoke.set);
  assert.equal(hex(revoke.data), '0300000000000000', 'fd_index 3, flags 0 (fault)');
  assert.equal(hex(decodeDeviceFeature(encodeDmaBufRevokeFeature(3, 1)).data), '0300000001000000');
  // The older 4-byte payload (fd_index alone) still decodes, as flags 0.
  assert.deepEqual(decodeDmaBufRevokePayload(Uint8Array.of(2, 0, 0, 0)), { fd_index: 2, flags: 0 });
  assert.throws(() => decodeDmaBufRevokePayload(Uint8Array.of(2, 0)), /revoke needs/);

  const bogus = new Uint8Array(8);
  new DataView(bogus.buffer).setUint32(0, 4, true);
  assert.throws(() => decodeDeviceFeature(bogus), /argsz 4 is below/);
});

test('iommufd iova range arrays round trip; count beyond the buffer is refused', () => {
  const ranges = [
    { start: 0n, last: 0xfedfffffn },
    { start: 0xfef00000n, last: 0xffffffffffffn },
  ];
  const bytes = encodeIommuIovaRanges(ranges);
  assert.equal(bytes.byteLength, 32);
  assert.deepEqual(decodeIommuIovaRanges(bytes, 2), ranges);
  assert.throws(() => decodeIommuIovaRanges(bytes, 3), RangeError);
});
