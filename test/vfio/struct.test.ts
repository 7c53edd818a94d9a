// The struct layout's encoder and decoder, on their own: every request and reply on the vfio-user wire and
// every kernel ioctl argument goes through them. Values round-trip field by field at the C ABI's offsets; a
// value that does not fit is refused with an error naming the structure, the field and, in an array, the
// element; a malformed layout is refused when it is declared.

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

const show = (v: unknown): string => JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? `${x}n` : x));

test('the layout follows the C ABI: natural alignment, padding, packed', () => {
  assert.deepEqual(sample.offsets, {
    a8: 0,
    a16: 2,
    a32: 4,
    s32: 8,
    a64: 16,
    s64: 24,
    list: 32,
    wide: 48,
    raw: 64,
  });
  assert.equal(sample.size, 72);
  const packed = struct(
    'packed',
    [
      ['a8', 'u8'],
      ['a64', 'u64'],
      ['a16', 'u16'],
    ],
    { packed: true },
  );
  assert.deepEqual(packed.offsets, { a8: 0, a64: 1, a16: 9 });
  assert.equal(packed.size, 11);
  const bytes = packed.encode({ a8: 1, a64: 0x0102030405060708n, a16: 0x0a0b });
  assert.deepEqual([...bytes], [1, 8, 7, 6, 5, 4, 3, 2, 1, 0x0b, 0x0a]);
  assert.deepEqual(packed.decode(bytes), { a8: 1, a64: 0x0102030405060708n, a16: 0x0a0b });
});

test('every kind of field round-trips at its offset', () => {
  const value = {
    a8: 0xfe,
    a16: 0xbeef,
    a32: 0xdeadbeef,
    s32: -0x80000000,
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
  assert.equal(dv.getInt32(sample.offsets.s32, true), -0x80000000);
  assert.equal(dv.getBigUint64(sample.offsets.wide + 8, true), 1n << 40n);
  assert.deepEqual(sample.decode(bytes), value);
  // A number fits a 64-bit field when it is a safe integer, a bigint a 32-bit one when in range.
  const mixed = { a64: 2 ** 40, a32: 7n } as unknown as Partial<typeof value>;
  assert.deepEqual(sample.decode(sample.encode(mixed)), {
    ...sample.decode(sample.encode({})),
    a64: 2n ** 40n,
    a32: 7,
  });
});

test('missing fields and short arrays encode as zero, padding is left alone, and `out` is returned', () => {
  const out = new Uint8Array(sample.size + 8).fill(0xff);
  assert.equal(sample.encode({ a16: 7, list: [4] }, out, 8), out);
  assert.deepEqual([...out.subarray(0, 8)], new Array(8).fill(0xff), 'bytes before the offset left alone');
  assert.equal(out[8 + 1], 0xff, 'the padding after a8 left alone');
  assert.deepEqual([...out.subarray(8 + 12, 8 + 16)], [0xff, 0xff, 0xff, 0xff], 'the padding before a64');
  assert.deepEqual([...out.subarray(8 + 69, 8 + 72)], [0xff, 0xff, 0xff], 'the tail padding');
  assert.deepEqual(sample.decode(out, 8), {
    a8: 0,
    a16: 7,
    a32: 0,
    s32: 0,
    a64: 0n,
    s64: 0n,
    list: [4, 0, 0],
    wide: [0n, 0n],
    raw: new Uint8Array(5),
  });
  assert.equal(sample.decode(sample.encode({ a32: null as unknown as number })).a32, 0, 'null as missing');
});

test('a buffer that is a view into a larger one is read and written at its own offset', () => {
  const backing = new Uint8Array(sample.size + 16).fill(0xee);
  const view = backing.subarray(16);
  sample.encode({ a8: 1, a64: 2n, raw: Uint8Array.of(3) }, view);
  assert.deepEqual([...backing.subarray(0, 16)], new Array(16).fill(0xee), 'nothing written before the view');
  assert.equal(backing[16], 1);
  assert.equal(new DataView(backing.buffer).getBigUint64(16 + sample.offsets.a64, true), 2n);
  const got = sample.decode(view);
  assert.equal(got.a8, 1);
  assert.equal(got.a64, 2n);
  assert.deepEqual([...got.raw], [3, 0, 0, 0, 0]);
});

test('decoded arrays and bytes are copies, also from a Buffer (whose own slice() is a view)', () => {
  const wire = Buffer.from(sample.encode({ list: [1, 2, 3], raw: Uint8Array.of(1, 2, 3, 4, 5) }));
  const got = sample.decode(wire);
  wire.fill(0xaa);
  assert.deepEqual([...got.raw], [1, 2, 3, 4, 5]);
  assert.deepEqual(got.list, [1, 2, 3]);
});

test('a value out of range is refused, naming the structure, the field and the array element', () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ a8: 256 }, /^sample\.a8: 256 is not an integer in \[0, 255\]$/],
    [{ a16: -1 }, /^sample\.a16: -1 is not an integer in \[0, 65535\]$/],
    [{ a32: 1.5 }, /^sample\.a32: 1\.5 is not an integer in \[0, 4294967295\]$/],
    [{ s32: 0x80000000 }, /^sample\.s32: 2147483648 is not an integer in \[-2147483648, 2147483647\]$/],
    [{ a64: -1n }, /^sample\.a64: -1 is out of range$/],
    [{ a64: 2 ** 60 }, /^sample\.a64: 1152921504606847000 is not a safe integer; pass a bigint$/],
    [{ s64: 1n << 63n }, /^sample\.s64: 9223372036854775808 is out of range$/],
    [{ s64: -(1n << 63n) - 1n }, /^sample\.s64: -9223372036854775809 is out of range$/],
    [{ s64: -(2 ** 60) }, /^sample\.s64: -1152921504606847000 is not a safe integer; pass a bigint$/],
    [{ list: [1, 2, -3] }, /^sample\.list\[2\]: -3 is not an integer in \[0, 4294967295\]$/],
    [{ wide: [0n, -1n] }, /^sample\.wide\[1\]: -1 is out of range$/],
    [{ list: [1, 2, 3, 4] }, /^sample\.list: 4 elements, room for 3$/],
    [{ raw: new Uint8Array(6) }, /^sample\.raw: 6 bytes, room for 5$/],
  ];
  for (const [value, message] of cases) {
    assert.throws(() => sample.encode(value), { name: 'RangeError', message }, show(value));
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
  assert.throws(() => sample.decode(new Uint8Array(sample.size), 2), {
    name: 'RangeError',
    message: `sample: needs ${sample.size} bytes at offset 2, have ${sample.size - 2}`,
  });
});

test('a malformed layout is refused when it is declared', () => {
  assert.throws(() => struct('bad', [['x', { array: 'u8', count: 2.5 }]]), {
    name: 'RangeError',
    message: 'bad.x: an array of 2.5 elements',
  });
  assert.throws(
    () => struct('bad', [['x', { array: 'u8', count: -1 }]]),
    /^RangeError: bad\.x: an array of -1/,
  );
  assert.throws(() => struct('bad', [['x', { bytes: -4 }]]), /^RangeError: bad\.x: -4 bytes$/);
  assert.throws(
    () =>
      struct('bad', [
        ['x', 'u8'],
        ['x', 'u32'],
      ]),
    /^RangeError: bad\.x: a second field of that name$/,
  );
});
