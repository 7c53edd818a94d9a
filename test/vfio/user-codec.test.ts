// Golden byte vectors for every vfio-user message devlease sends or parses,
// written by hand from the tables of QEMU's docs/interop/vfio-user.rst (the
// section is named beside each vector). All fields little-endian.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ProtocolError } from '../../src/errors.js';
import {
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  vfio_device_feature_dma_buf,
  vfio_irq_info,
  vfio_region_dma_range,
  vfio_region_info,
} from '../../src/vfio/uapi/vfio.js';
import { buildRegionCaps, parseRegionCaps, rebaseCaps } from '../../src/vfio/user/caps.js';
import {
  decodeMessage,
  encodeCommand,
  encodeErrorReply,
  encodeMessage,
  encodeReply,
  errorReason,
} from '../../src/vfio/user/codec.js';
import {
  decodeVersion,
  encodeFeature,
  encodeIrqSet,
  encodeRegionAccess,
  encodeVersion,
  vfio_user_device_info,
  vfio_user_dma_map,
  vfio_user_dma_region_access,
  vfio_user_dma_unmap,
  vfio_user_region_access,
} from '../../src/vfio/user/messages.js';
import * as P from '../../src/vfio/user/protocol.js';
import { MAX_CAPABILITY_DEPTH, minPageSize, readCapabilities } from '../../src/vfio/user/version.js';

/** Bytes from a hex string with spaces, e.g. '01 00 ff'. */
function hex(s: string): Buffer {
  return Buffer.from(s.replace(/\s+/g, ''), 'hex');
}

function same(actual: Uint8Array, expected: Buffer, what: string): void {
  assert.equal(Buffer.from(actual).toString('hex'), expected.toString('hex'), what);
}

describe('vfio-user golden vectors', () => {
  test('"Commands" table numbering (current spec: 14 withdrawn, 15 WRITE_MULTI, 16 FEATURE, 17/18 MIG)', () => {
    assert.deepEqual(
      [
        P.VFIO_USER_VERSION,
        P.VFIO_USER_DMA_MAP,
        P.VFIO_USER_DMA_UNMAP,
        P.VFIO_USER_DEVICE_GET_INFO,
        P.VFIO_USER_DEVICE_GET_REGION_INFO,
        P.VFIO_USER_DEVICE_GET_REGION_IO_FDS,
        P.VFIO_USER_DEVICE_GET_IRQ_INFO,
        P.VFIO_USER_DEVICE_SET_IRQS,
        P.VFIO_USER_REGION_READ,
        P.VFIO_USER_REGION_WRITE,
        P.VFIO_USER_DMA_READ,
        P.VFIO_USER_DMA_WRITE,
        P.VFIO_USER_DEVICE_RESET,
      ],
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
    );
    assert.equal(P.VFIO_USER_REGION_WRITE_MULTI, 15);
    assert.equal(P.VFIO_USER_DEVICE_FEATURE, 16);
    assert.equal(P.VFIO_USER_MIG_DATA_READ, 17);
    assert.equal(P.VFIO_USER_MIG_DATA_WRITE, 18);
  });

  test('"Header": msg_id, command, msg_size, flags (type, No_reply bit 4, Error bit 5), error', () => {
    assert.equal(P.vfio_user_header.size, 16);
    // Reply (type 1) to msg 0x1234, DEVICE_RESET, 16 bytes, no error.
    same(encodeReply(0x1234, 13), hex('3412 0d00 10000000 01000000 00000000'), 'reply header');
    // Command with No_reply, REGION_WRITE, msg_id 7.
    same(
      encodeCommand(7, 10, new Uint8Array(4), true),
      hex('0700 0a00 14000000 10000000 00000000 00000000'),
      'no_reply command',
    );
    // Error reply: type 1 | Error (0x20), errno 22 (EINVAL) at offset 12, header only.
    same(encodeErrorReply(9, 5, 22), hex('0900 0500 10000000 21000000 16000000'), 'error reply');
    const m = decodeMessage(hex('0900 0500 10000000 21000000 16000000'));
    assert.deepEqual(
      { ...m, payload: m.payload.byteLength },
      { msgId: 9, command: 5, flags: 0x21, errorNo: 22, payload: 0 },
    );
  });

  test('devlease "error_reason": an error reply may carry the reason after the header', () => {
    const m = encodeErrorReply(9, 2, 1, 'outside');
    same(m, hex('0900 0200 17000000 21000000 01000000 6f757473696465'), 'error reply with reason');
    assert.equal(errorReason(decodeMessage(m)), 'outside');
    assert.equal(errorReason(decodeMessage(encodeErrorReply(9, 2, 1))), undefined);
  });

  test('"Header": short header, msg_size mismatch and unknown type are ProtocolErrors', () => {
    assert.throws(
      () => decodeMessage(hex('0100 0100 10000000')),
      (err: Error) => {
        assert.ok(err instanceof ProtocolError);
        assert.match(err.message, /message of 8 bytes is shorter than the 16-byte header/);
        return true;
      },
    );
    assert.throws(
      () => decodeMessage(hex('0100 0d00 20000000 00000000 00000000')),
      /msg_size 32 .* 16 bytes/,
    );
    assert.throws(() => decodeMessage(hex('0100 0d00 10000000 02000000 00000000')), /unknown message type 2/);
    assert.throws(() => decodeMessage(hex('0100 0d00 10000000 40000000 00000000')), /reserved/);
  });

  test('"VFIO_USER_VERSION": major, minor, NUL-terminated JSON', () => {
    const payload = encodeVersion(0, 0, { capabilities: { max_msg_fds: 16 } });
    const json = Buffer.from('{"capabilities":{"max_msg_fds":16}}\0');
    same(payload, Buffer.concat([hex('0000 0000'), json]), 'version payload');
    same(
      encodeCommand(1, P.VFIO_USER_VERSION, payload),
      Buffer.concat([
        hex('0100 0100'),
        Buffer.from([16 + 4 + json.length, 0, 0, 0]),
        hex('00000000 00000000'),
        hex('0000 0000'),
        json,
      ]),
      'version message',
    );
    const v = decodeVersion(payload);
    assert.deepEqual(v, { major: 0, minor: 0, json: { capabilities: { max_msg_fds: 16 } } });
    // Version data is optional.
    assert.deepEqual(decodeVersion(hex('0000 0200')), { major: 0, minor: 2, json: {} });
    assert.throws(
      () => decodeVersion(Buffer.concat([hex('0000 0000'), Buffer.from('[1]\0')])),
      /not a JSON object/,
    );
  });

  test('"Version" capabilities: spec defaults for absent members', () => {
    assert.deepEqual(readCapabilities({}), {
      maxMsgFds: 1,
      maxDataXferSize: 1048576,
      maxDmaMaps: 65535,
      pgsizes: 4096,
      twinSocket: false,
      raw: {},
    });
    const c = readCapabilities({
      capabilities: { max_msg_fds: 8, pgsizes: 0x201000, twin_socket: { supported: true } },
    });
    assert.equal(c.maxMsgFds, 8);
    assert.equal(c.twinSocket, true);
    assert.equal(minPageSize(c.pgsizes), 4096);
    assert.throws(() => readCapabilities({ capabilities: { max_msg_fds: 'many' } }), /max_msg_fds/);
  });

  test('"Version" capabilities: a u64 pgsizes mask is read; max_data_xfer_size 0 and deep nesting are refused', () => {
    // Every page size from 4 KiB up: past 2^53, exact as a double, and what a server may well send.
    const all = readCapabilities({ capabilities: { pgsizes: 0xfffffffffffff000 } });
    assert.equal(minPageSize(all.pgsizes), 4096);
    assert.throws(
      () => readCapabilities({ capabilities: { pgsizes: 2 ** 64 } }),
      /pgsizes must be a 64-bit mask/,
    );
    // Transfers are split into pieces of max_data_xfer_size: 0 would never end.
    assert.throws(
      () => readCapabilities({ capabilities: { max_data_xfer_size: 0 } }),
      /max_data_xfer_size must be an integer of at least 1, got 0/,
    );
    // The raw object is kept and handed over at a broker upgrade, whose encoding recurses.
    // The capabilities object is the first level: 32 in all are taken, 33 refused.
    let deep: unknown = 1;
    for (let i = 0; i < MAX_CAPABILITY_DEPTH; i++) deep = [deep];
    assert.throws(() => readCapabilities({ capabilities: { x: deep } }), /nests deeper than 32 levels/);
    let ok: unknown = 1;
    for (let i = 0; i < MAX_CAPABILITY_DEPTH - 1; i++) ok = [ok];
    assert.deepEqual(readCapabilities({ capabilities: { x: ok } }).raw, { x: ok });
    let huge: unknown = 1;
    for (let i = 0; i < 30_000; i++) huge = [huge];
    assert.throws(() => readCapabilities({ capabilities: { x: huge } }), /nests deeper/);
  });

  test('"VFIO_USER_DMA_MAP": argsz, flags, offset, address, size (32 bytes)', () => {
    const p = vfio_user_dma_map.encode({
      argsz: 32,
      flags: 3,
      offset: 0x1000n,
      addr: 0x100000n,
      size: 0x2000n,
    });
    same(p, hex('20000000 03000000 0010000000000000 0000100000000000 0020000000000000'), 'dma map payload');
    assert.equal(encodeCommand(2, P.VFIO_USER_DMA_MAP, p).byteLength, 16 + 32);
    assert.equal(vfio_user_dma_map.decode(p).addr, 0x100000n);
  });

  test('"VFIO_USER_DMA_UNMAP": argsz, flags, address, size (24 bytes)', () => {
    const p = vfio_user_dma_unmap.encode({ argsz: 24, flags: 0, addr: 0x100000n, size: 0x2000n });
    same(p, hex('18000000 00000000 0000100000000000 0020000000000000'), 'dma unmap payload');
  });

  test('"VFIO_USER_DEVICE_GET_INFO": argsz, flags, num_regions, num_irqs', () => {
    same(vfio_user_device_info.encode({ argsz: 16 }), hex('10000000 00000000 00000000 00000000'), 'request');
    const reply = hex('10000000 03000000 09000000 05000000'); // RESET|PCI, 9 regions, 5 irq types
    assert.deepEqual(vfio_user_device_info.decode(reply), {
      argsz: 16,
      flags: 3,
      num_regions: 9,
      num_irqs: 5,
    });
  });

  test('"VFIO_USER_DEVICE_GET_REGION_INFO" + "VFIO sparse mmap cap header"', () => {
    same(
      vfio_region_info.encode({ argsz: 32, index: 7 }),
      hex('20000000 00000000 07000000 00000000 0000000000000000 0000000000000000'),
      'request',
    );
    // Reply: READ|WRITE|MMAP|CAPS, index 2, cap at 32, size 0x10000, offset 0;
    // cap: id 1 (SPARSE_MMAP), version 1, next 0, nr_areas 1, reserved, {offset 0x1000, size 0x1000}.
    const reply = hex(
      '40000000 0f000000 02000000 20000000 0000010000000000 0000000000000000' +
        '0100 0100 00000000 01000000 00000000 0010000000000000 0010000000000000',
    );
    const info = vfio_region_info.decode(reply);
    assert.deepEqual(info, { argsz: 64, flags: 0xf, index: 2, cap_offset: 32, size: 0x10000n, offset: 0n });
    const caps = parseRegionCaps(reply, info.cap_offset);
    assert.deepEqual(caps.sparseMmap, [{ offset: 0x1000n, size: 0x1000n }]);
    // What a model builds (chain relative to its start) rebased behind vfio_region_info is the same bytes.
    const built = rebaseCaps(buildRegionCaps([{ sparseMmap: [{ offset: 0x1000n, size: 0x1000n }] }]), 32);
    same(built, reply.subarray(32), 'built sparse mmap cap');
    assert.equal(caps.all[0]?.id, VFIO_REGION_INFO_CAP_SPARSE_MMAP);
  });

  test('region capability chains: two caps linked, loops and out-of-range offsets rejected', () => {
    const chain = rebaseCaps(
      buildRegionCaps([{ type: 0x1234, subtype: 7 }, { sparseMmap: [{ offset: 0n, size: 0x1000n }] }]),
      32,
    );
    const reply = new Uint8Array(32 + chain.byteLength);
    reply.set(chain, 32);
    const caps = parseRegionCaps(reply, 32);
    assert.deepEqual(caps.type, { type: 0x1234, subtype: 7 });
    assert.deepEqual(caps.sparseMmap, [{ offset: 0n, size: 0x1000n }]);
    assert.equal(caps.all.length, 2);
    const loop = reply.slice();
    new DataView(loop.buffer).setUint32(32 + 4, 32, true); // first cap's next points at itself
    const protocolError = (message: RegExp) => (err: Error) => {
      assert.ok(err instanceof ProtocolError);
      assert.match(err.message, message);
      return true;
    };
    assert.throws(() => parseRegionCaps(loop, 32), protocolError(/chain loops back to offset 32/));
    assert.throws(
      () => parseRegionCaps(reply, 4096),
      protocolError(/capability at offset 4096 overruns the 80-byte buffer/),
    );
  });

  test('"VFIO_USER_DEVICE_GET_IRQ_INFO": argsz, flags, index, count', () => {
    same(
      vfio_irq_info.encode({ argsz: 16, index: 2 }),
      hex('10000000 00000000 02000000 00000000'),
      'request',
    );
    assert.deepEqual(vfio_irq_info.decode(hex('10000000 01000000 02000000 41000000')), {
      argsz: 16,
      flags: 1,
      index: 2,
      count: 65,
    });
  });

  test('"VFIO_USER_DEVICE_SET_IRQS": argsz, flags, index, start, count, data', () => {
    same(
      encodeIrqSet({
        flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        index: 2,
        start: 0,
        count: 1,
      }),
      hex('14000000 24000000 02000000 00000000 01000000'),
      'eventfd trigger (fd travels as SCM_RIGHTS)',
    );
    same(
      encodeIrqSet(
        { flags: VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER, index: 2, start: 3, count: 2 },
        Uint8Array.of(1, 0),
      ),
      hex('16000000 22000000 02000000 03000000 02000000 0100'),
      'bool trigger with data',
    );
  });

  test('"VFIO_USER_REGION_READ" / "VFIO_USER_REGION_WRITE": offset, region, count, data', () => {
    same(
      vfio_user_region_access.encode({ offset: 0x10n, region: 0, count: 4 }),
      hex('1000000000000000 00000000 04000000'),
      'read request',
    );
    same(
      encodeRegionAccess(0x10n, 0, hex('deadbeef')),
      hex('1000000000000000 00000000 04000000 deadbeef'),
      'write request / read reply',
    );
  });

  test('"VFIO_USER_DMA_READ" / "VFIO_USER_DMA_WRITE": address, count (u64)', () => {
    assert.deepEqual(vfio_user_dma_region_access.decode(hex('0000100000000000 0800000000000000')), {
      addr: 0x100000n,
      count: 8n,
    });
  });

  test('"VFIO_USER_DEVICE_RESET": no payload', () => {
    same(encodeCommand(3, P.VFIO_USER_DEVICE_RESET), hex('0300 0d00 10000000 00000000 00000000'), 'reset');
  });

  test('"VFIO_USER_DEVICE_FEATURE": argsz, flags (feature | GET/SET/PROBE), data — dma-buf (feature 11)', () => {
    const dmabuf = new Uint8Array(vfio_device_feature_dma_buf.size + vfio_region_dma_range.size);
    vfio_device_feature_dma_buf.encode({ region_index: 2, open_flags: 2, flags: 0, nr_ranges: 1 }, dmabuf);
    vfio_region_dma_range.encode({ offset: 0n, length: 0x10000n }, dmabuf, vfio_device_feature_dma_buf.size);
    const flags = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF;
    same(
      encodeFeature(8 + dmabuf.byteLength, flags, dmabuf),
      hex('28000000 0b000100 02000000 02000000 00000000 01000000 0000000000000000 0000010000000000'),
      'dma-buf GET',
    );
  });

  test('encodeMessage computes msg_size and round-trips through decodeMessage', () => {
    const payload = Uint8Array.from({ length: 100 }, (_, i) => i);
    const bytes = encodeMessage({ msgId: 0xffff, command: 16, flags: 0, payload });
    const m = decodeMessage(bytes);
    assert.equal(m.msgId, 0xffff);
    assert.equal(m.command, 16);
    same(m.payload, Buffer.from(payload), 'payload');
  });
});
