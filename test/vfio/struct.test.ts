// The struct layout's encoder and decoder, on their own: every request and reply on the vfio-user wire and
// every kernel ioctl argument goes through them. Values round-trip field by field; a value that does not fit
// is refused with an error naming the structure, the field and, in an array, the element.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { struct } from '../../src/vfio/struct.js';

const sample = struct('sample', [
  ['a8', 'u8'],
  ['a16', 'u16'],
  ['a32', 'u32'],
  ['s32', 's32'],
  ['a64', 'u64'],
  ['s64', 's64'],
  ['list', { array: 'u32', count: 3 }],
  ['wide', { array: 'u64', count: 2 }],
  ['raw', { bytes: 5 }],
]);

test('every kind of field round-trips at its offset', () => {
  const value = {
    a8: 0xfe,
    a16: 0xbeef,
    a32: 0xdeadbeef,
    s32: -2,
    a64: 0xffffffffffffffffn,
    s64: -(1n << 63n),
    list: [1, 2, 3],
    wide: [5n, 1n << 40n],
    raw: Uint8Array.of(9, 8, 7, 6, 5),
  };
  const bytes = sample.encode(value);
  assert.equal(bytes.byteLength, sample.size);
  const dv = new DataView(bytes.buffer);
  assert.equal(dv.getUint32(sample.offsets.a32, true), 0xdeadbeef);
  assert.equal(dv.getInt32(sample.offsets.s32, true), -2);
  assert.equal(dv.getBigUint64(sample.offsets.wide + 8, true), 1n << 40n);
  assert.deepEqual(sample.decode(bytes), value);
});

test('missing fields and short arrays encode as zero; decode copies, so the buffer can be reused', () => {
  const out = new Uint8Array(sample.size + 8).fill(0xff);
  sample.encode({ a16: 7, list: [4] }, out, 8);
  assert.deepEqual([...out.subarray(0, 8)], new Array(8).fill(0xff), 'bytes before the offset left alone');
  const got = sample.decode(out, 8);
  assert.deepEqual(got.list, [4, 0, 0]);
  assert.deepEqual(got.wide, [0n, 0n]);
  assert.deepEqual([...got.raw], [0, 0, 0, 0, 0]);
  assert.equal(got.a64, 0n);
  out.fill(0xaa);
  assert.deepEqual([...got.raw], [0, 0, 0, 0, 0], 'the decoded bytes are a copy');
});

test('a value out of range is refused, naming the structure, the field and the array element', () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ a8: 256 }, /^sample\.a8: 256 is not an integer in \[0, 255\]$/],
    [{ a16: -1 }, /^sample\.a16: -1 is not an integer/],
    [{ a32: 1.5 }, /^sample\.a32: 1\.5 is not an integer/],
    [{ s32: 0x80000000 }, /^sample\.s32: 2147483648 is not an integer in \[-2147483648, 2147483647\]$/],
    [{ a64: -1n }, /^sample\.a64: -1 is out of range$/],
    [{ a64: 2 ** 60 }, /^sample\.a64: \d+ is not a safe integer; pass a bigint$/],
    [{ s64: 1n << 63n }, /^sample\.s64: 9223372036854775808 is out of range$/],
    [{ list: [1, 2, -3] }, /^sample\.list\[2\]: -3 is not an integer/],
    [{ wide: [0n, -1n] }, /^sample\.wide\[1\]: -1 is out of range$/],
    [{ list: [1, 2, 3, 4] }, /^sample\.list: 4 elements, room for 3$/],
    [{ raw: new Uint8Array(6) }, /^sample\.raw: 6 bytes, room for 5$/],
  ];
  for (const [value, message] of cases) {
    assert.throws(() => sample.encode(value), { name: 'RangeError', message }, JSON.stringify(value, String));
  }
});

test('a buffer too short is refused, naming the structure and the sizes', () => {
  assert.throws(() => sample.encode({}, new Uint8Array(sample.size), 1), {
    name: 'RangeError',
    message: `sample: encode needs ${sample.size} bytes at offset 1, buffer has ${sample.size}`,
  });
  assert.throws(() => sample.decode(new Uint8Array(sample.size - 1)), {
    name: 'RangeError',
    message: `sample: needs ${sample.size} bytes at offset 0, have ${sample.size - 1}`,
  });
});
