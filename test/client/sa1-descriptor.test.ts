// Sa1Queue's SQE encoding (writeSqe) against the device model's decoder: the 64-bit fields of every size a
// caller can pass — the IOVAs a lease hands out, values past 2^53 that a number cannot hold, and negative
// BigInts (taken mod 2^64) — land in the ring as the datasheet's little-endian words (§3).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { writeSqe } from '../../src/client/sa1-descriptor.js';
import { decodeDescriptor } from '../../src/sim/model/descriptor.js';

const cases: bigint[] = [
  0n,
  1n,
  0x20_0000n,
  0xffff_ffffn,
  0x1_0000_0000n,
  2n ** 53n - 1n,
  2n ** 53n,
  2n ** 53n + 1n,
  0xdead_beef_cafe_f00dn,
  2n ** 64n - 1n,
  -1n,
  -(2n ** 40n),
];

test('writeSqe stores src, dst and imm as the device decodes them, for every 64-bit value', () => {
  const ring = new Uint32Array(16);
  const bytes = new Uint8Array(ring.buffer);
  for (const v of cases) {
    writeSqe(ring, 0, { opcode: 'COPY', src: v, dst: v ^ 0x1000n, imm: v, length: 4096 }, 7, false);
    const d = decodeDescriptor(bytes);
    assert.deepEqual(
      [d.src, d.dst, d.imm, d.length, d.tag],
      [BigInt.asUintN(64, v), BigInt.asUintN(64, v ^ 0x1000n), BigInt.asUintN(64, v), 4096, 7n],
      `value 0x${BigInt.asUintN(64, v).toString(16)}`,
    );
  }
});

test('writeSqe clears the fields a descriptor leaves out: a reused slot keeps nothing of the last one', () => {
  const ring = new Uint32Array(16);
  const bytes = new Uint8Array(ring.buffer);
  writeSqe(
    ring,
    0,
    { opcode: 'FILL', src: 0x1234n, dst: 0x9000n, imm: 0x5a5a_5a5a_5a5a_5a5an, length: 64 },
    1,
    false,
  );
  writeSqe(ring, 0, { opcode: 'NOP' }, 2, false);
  const d = decodeDescriptor(bytes);
  assert.deepEqual([d.src, d.dst, d.imm, d.length, d.tag], [0n, 0n, 0n, 0, 2n]);
  assert.ok(
    ring.subarray(1, 8).every((w) => w === 0),
    'words 1..7 (length, src, dst, imm) are 0',
  );
});
