import assert from 'node:assert/strict';
import { test } from 'node:test';
import { crc32c } from '../../src/sim/model/crc32c.js';

// RFC 3720 appendix B.4 (CRC examples); the RFC prints the CRC bytes as
// stored on the wire (little-endian), e.g. "aa 36 91 8a" for 0x8A9136AA.
const iscsiReadPdu = Uint8Array.from([
  0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
]);

test('CRC32C matches RFC 3720 B.4: 32 bytes of zeros', () => {
  assert.equal(crc32c(new Uint8Array(32)), 0x8a9136aa);
});
test('CRC32C matches RFC 3720 B.4: 32 bytes of 0xff', () => {
  assert.equal(crc32c(new Uint8Array(32).fill(0xff)), 0x62a8ab43);
});
test('CRC32C matches RFC 3720 B.4: 32 incrementing bytes', () => {
  assert.equal(crc32c(Uint8Array.from({ length: 32 }, (_, i) => i)), 0x46dd794e);
});
test('CRC32C matches RFC 3720 B.4: 32 decrementing bytes', () => {
  assert.equal(crc32c(Uint8Array.from({ length: 32 }, (_, i) => 31 - i)), 0x113fdb5c);
});
test('CRC32C matches RFC 3720 B.4: an iSCSI read command PDU', () => {
  assert.equal(crc32c(iscsiReadPdu), 0xd9963a56);
});
test('CRC32C check value "123456789" and chaining over pieces of every length', () => {
  const msg = new TextEncoder().encode('123456789');
  assert.equal(crc32c(msg), 0xe3069283);
  const data = Uint8Array.from({ length: 1000 }, (_, i) => (i * 131 + 7) & 0xff);
  const whole = crc32c(data);
  for (const cut of [0, 1, 7, 8, 9, 500, 999, 1000]) {
    assert.equal(crc32c(data.subarray(cut), crc32c(data.subarray(0, cut))), whole, `split at ${cut}`);
  }
});
