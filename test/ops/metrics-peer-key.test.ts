// The metrics endpoint's per-peer key (src/broker/observe/peer-key.ts): an IPv6 peer is its /64, since one host
// has a /64 of addresses to connect from; an IPv4 peer of a dual-stack listener (::ffff:a.b.c.d) is its IPv4
// address. Loopback has one IPv6 address, so the many-addresses case is the key's alone; a real dual-stack
// endpoint is in metrics-limits.test.ts.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { addressKey } from '../../src/broker/observe/peer-key.js';

test('IPv6 addresses of one /64 are one peer, whatever their spelling', () => {
  const key = '2001:db8:1:2::/64';
  for (const a of [
    '2001:db8:1:2::1',
    '2001:db8:1:2:ffff:ffff:ffff:ffff',
    '2001:0db8:0001:0002:0000:0000:0000:0099',
    '2001:DB8:1:2:a:b:c:d',
    '2001:db8:1:2::10.0.0.1',
  ])
    assert.equal(addressKey(a), `net ${key}`, a);
});

test('IPv6 addresses of different /64s are different peers', () => {
  assert.notEqual(addressKey('2001:db8:1:2::1'), addressKey('2001:db8:1:3::1'));
  assert.notEqual(addressKey('2001:db8:1:2::1'), addressKey('2001:db9:1:2::1'));
  assert.equal(addressKey('::1'), 'net 0:0:0:0::/64');
  assert.equal(addressKey('::'), 'net 0:0:0:0::/64');
  assert.equal(addressKey('fd00::2'), 'net fd00:0:0:0::/64');
});

test('a link-local address with a zone is keyed by its /64 (the zone dropped)', () => {
  assert.equal(addressKey('fe80::1%eth0'), 'net fe80:0:0:0::/64');
  assert.equal(addressKey('fe80::2%lo'), addressKey('fe80::1%eth0'));
});

test('IPv4 peers are their address, also as IPv4-mapped IPv6 (a dual-stack listener), in either spelling', () => {
  assert.equal(addressKey('127.0.0.2'), 'addr 127.0.0.2');
  assert.equal(addressKey('::ffff:127.0.0.2'), 'addr 127.0.0.2');
  assert.equal(addressKey('::ffff:7f00:2'), 'addr 127.0.0.2');
  assert.equal(addressKey('0:0:0:0:0:ffff:c000:0201'), 'addr 192.0.2.1');
  assert.notEqual(
    addressKey('::ffff:127.0.0.2'),
    addressKey('::ffff:127.0.0.3'),
    'not one /64 for all of IPv4',
  );
  // ::127.0.0.2 (IPv4-compatible, deprecated) and 64:ff9b::/96 (NAT64) are IPv6 addresses: their /64.
  assert.equal(addressKey('::127.0.0.2'), 'net 0:0:0:0::/64');
  assert.equal(addressKey('64:ff9b::7f00:2'), 'net 64:ff9b:0:0::/64');
});
