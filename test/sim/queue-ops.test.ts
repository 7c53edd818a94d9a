// Descriptor execution, rings, phase, back-pressure, fairness and interrupt
// coalescing (a batch ended by the device stopping included), on the device
// model driven in-process.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { crc32c } from '../../src/sim/model/crc32c.js';
import * as ds from '../../src/sim/model/datasheet.js';
import { PCI_COMMAND, PCI_COMMAND_MEMORY } from '../../src/vfio/uapi/pci-regs.js';
import { VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX } from '../../src/vfio/uapi/vfio.js';
import { BAR0, CONFIG, qcfg, r32, r64, w32 } from './helpers/driver.js';
import { type Booted, booted, HOST_IOVA, queue } from './helpers/scenario.js';

const DATA = 0x8_0000; // offset of scratch data inside host memory
const at = (off: number): bigint => HOST_IOVA + BigInt(off);

test('COPY, FILL, CRC32C and WRITE_IMM are correct across two ring wraps, phase flipping each pass', async () => {
  const p = await booted();
  const tq = await queue(p, 0, { sqSize: 4, cqSize: 4 });
  const src = p.host.view.subarray(DATA, DATA + 5000);
  for (let i = 0; i < src.length; i++) src[i] = (i * 7 + 3) & 0xff;
  const seen: number[] = [];
  for (let pass = 0; pass < 3; pass++) {
    const base = DATA + 0x1_0000 * (pass + 1);
    await tq.submit([
      { opcode: ds.OP_COPY, length: 5000, src: at(DATA), dst: at(base), tag: 10n + BigInt(pass) },
      { opcode: ds.OP_FILL, length: 13, dst: at(base + 0x4000), imm: 0x0807060504030201n, tag: 20n },
      { opcode: ds.OP_CRC32C, length: 5000, src: at(DATA), tag: 30n },
      {
        opcode: ds.OP_WRITE_IMM,
        dst: at(base + 0x5000),
        imm: 0x1122334455667788n,
        tag: 40n,
        flags: ds.FLAG_INTR,
      },
    ]);
    const done = await tq.reap(4);
    assert.deepEqual(
      done.map((c) => [c.tag, c.status]),
      [
        [10n + BigInt(pass), 0],
        [20n, 0],
        [30n, 0],
        [40n, 0],
      ],
    );
    seen.push(...done.map((c) => c.phase));
    assert.equal(done[2]?.result, crc32c(src), 'CRC32C result');
    assert.deepEqual(p.host.view.subarray(base, base + 5000), src, 'COPY moved the bytes');
    assert.deepEqual(
      [...p.host.view.subarray(base + 0x4000, base + 0x4000 + 14)],
      [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 0],
    );
    const imm = new DataView(p.host.view.buffer).getBigUint64(base + 0x5000, true);
    assert.equal(imm, 0x1122334455667788n);
  }
  assert.deepEqual(
    seen,
    [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1],
    'phase is 1 on the first pass and flips on every wrap',
  );
  assert.equal(await tq.pageRead32(ds.QP_SQ_HEAD), 12);
  assert.equal(await tq.pageRead32(ds.QP_CQ_TAIL), 12);
  assert.equal(await r64(p.bus, BAR0, qcfg(0, ds.Q_COMPLETED)), 12n);
  assert.equal(await r64(p.bus, BAR0, qcfg(0, ds.Q_BYTES)), 3n * (5000n + 13n + 5000n + 8n));
});

test('devmem operands: COPY host→BAR4→host and FILL into BAR4, visible to owner REGION_READ', async () => {
  const p = await booted();
  const tq = await queue(p, 1);
  p.host.view.set([9, 8, 7, 6, 5], DATA);
  const g = p.dev.options.devmemGranule;
  await tq.submit([
    { opcode: ds.OP_COPY, flags: ds.FLAG_DST_DEVMEM, length: 5, src: at(DATA), dst: BigInt(g - 2) },
    { opcode: ds.OP_COPY, flags: ds.FLAG_SRC_DEVMEM, length: 5, src: BigInt(g - 2), dst: at(DATA + 64) },
    { opcode: ds.OP_FILL, flags: ds.FLAG_DST_DEVMEM, length: 3, dst: 100n, imm: 0xaabbccn },
  ]);
  const done = await tq.reap(3);
  assert.deepEqual(
    done.map((c) => c.status),
    [0, 0, 0],
  );
  assert.deepEqual(
    [...p.host.view.subarray(DATA + 64, DATA + 69)],
    [9, 8, 7, 6, 5],
    'copy spanning two granules',
  );
  assert.deepEqual([...(await p.bus.read(4, g - 2, 5))], [9, 8, 7, 6, 5]);
  assert.deepEqual([...(await p.bus.read(4, 100, 3))], [0xcc, 0xbb, 0xaa]);
});

test('a DMA range spanning two adjacent IOMMU maps is translated byte by byte', async () => {
  const p = await booted();
  const extra = p.map(HOST_IOVA + BigInt(p.host.view.length), 4096);
  const tq = await queue(p, 0, { window: { base: HOST_IOVA, size: BigInt(p.host.view.length + 4096) } });
  await tq.submit([
    { opcode: ds.OP_FILL, length: 200, dst: at(p.host.view.length - 100), imm: 0x5a5a5a5a5a5a5a5an },
  ]);
  assert.equal((await tq.reap(1))[0]?.status, 0);
  assert.ok(p.host.view.subarray(p.host.view.length - 100).every((b) => b === 0x5a));
  assert.ok(extra.view.subarray(0, 100).every((b) => b === 0x5a));
  assert.equal(extra.view[100], 0);
});

test('BAD_OPCODE and BAD_LENGTH complete with their status and the queue continues', async () => {
  const p = await booted();
  const tq = await queue(p, 0);
  await tq.submit([
    { opcode: 9, tag: 1n },
    { opcode: ds.OP_NOP, tag: 2n },
    { opcode: ds.OP_FILL, length: 0, dst: at(DATA), tag: 3n },
    { opcode: ds.OP_COPY, length: ds.MAX_LENGTH + 1, src: at(DATA), dst: at(DATA), tag: 4n },
    { opcode: ds.OP_NOP, tag: 5n },
    { opcode: ds.OP_NOP, flags: 0x80, tag: 6n },
  ]);
  p.host.view[1 * 64 + 50] = 1; // a non-zero reserved byte in 40..63 of tag 2's entry
  const done = await tq.reap(6);
  assert.deepEqual(
    done.map((c) => [c.tag, c.status]),
    [
      [1n, 1],
      [2n, 1],
      [3n, 2],
      [4n, 2],
      [5n, 0],
      [6n, 1],
    ],
  );
  await tq.submit([{ opcode: ds.OP_NOP, tag: 7n }], false);
  p.host.view[((tq.tail - 1) % 8) * 64 + 2] = 1;
  await tq.ring();
  assert.deepEqual(
    (await tq.reap(1)).map((c) => c.status),
    [ds.ST_BAD_OPCODE],
  );
  const st = await r32(p.bus, BAR0, qcfg(0, ds.Q_STATUS));
  assert.equal(st & ds.Q_STATUS_ERROR, 0, 'queue not in ERROR');
  assert.equal(st >> 8, ds.ST_BAD_OPCODE, 'Q_STATUS b8..15: last error code');
  assert.equal(await tq.pageRead32(ds.QP_Q_ERROR), ds.ST_BAD_OPCODE, 'Q_ERROR mirrors it');
  assert.equal(p.dev.faults.head, 0, 'no fault record for completion-only errors');
});

test('full CQ: the device stops fetching at CQ_SIZE outstanding and resumes when CQ_HEAD advances', async () => {
  const p = await booted();
  const tq = await queue(p, 0, { sqSize: 16, cqSize: 4 });
  await tq.submit(Array.from({ length: 10 }, (_, i) => ({ opcode: ds.OP_NOP, tag: BigInt(i) })));
  p.dev.runUntilIdle();
  assert.equal(await tq.pageRead32(ds.QP_SQ_HEAD), 4, 'fetched only as many as the CQ holds');
  assert.equal(await tq.pageRead32(ds.QP_CQ_TAIL), 4);
  p.dev.runUntilIdle();
  assert.equal(await tq.pageRead32(ds.QP_SQ_HEAD), 4, 'still stopped');
  const first = await tq.reap(2); // advances CQ_HEAD by 2
  assert.deepEqual(
    first.map((c) => c.tag),
    [0n, 1n],
  );
  p.dev.runUntilIdle();
  assert.equal(await tq.pageRead32(ds.QP_SQ_HEAD), 6, 'resumed for exactly the freed slots');
  const rest = [...(await tq.reap(4)), ...(await tq.reap(4))];
  assert.deepEqual(
    rest.map((c) => c.tag),
    [2n, 3n, 4n, 5n, 6n, 7n, 8n, 9n],
  );
});

test('round-robin: two busy queues alternate one descriptor per turn', async () => {
  const p = await booted();
  const a = await queue(p, 0, { sqSize: 64, cqSize: 64 });
  const b = await queue(p, 1, { sqSize: 64, cqSize: 64 });
  // Queue 0 writes i to X; queue 1's i-th descriptor copies X into log slot i.
  const X = DATA;
  const LOG = DATA + 0x1000;
  await a.submit(
    Array.from({ length: 32 }, (_, i) => ({ opcode: ds.OP_WRITE_IMM, dst: at(X), imm: BigInt(i + 1) })),
    false,
  );
  await b.submit(
    Array.from({ length: 32 }, (_, i) => ({
      opcode: ds.OP_COPY,
      length: 8,
      src: at(X),
      dst: at(LOG + 8 * i),
    })),
    false,
  );
  await a.ring();
  await b.ring();
  await a.reap(32);
  await b.reap(32);
  const log = new DataView(p.host.view.buffer, LOG);
  const seen = Array.from({ length: 32 }, (_, i) => Number(log.getBigUint64(8 * i, true)));
  assert.deepEqual(
    seen,
    Array.from({ length: 32 }, (_, i) => i + 1),
    'B_i saw exactly A_i: strict alternation',
  );
});

test('interrupts coalesce: one signal per batch, IRQ_MODE 0 only for INTR descriptors', async () => {
  const p = await booted();
  const tq = await queue(p, 2, { sqSize: 64, cqSize: 64 });
  await tq.submit(Array.from({ length: 10 }, () => ({ opcode: ds.OP_NOP })));
  await tq.reap(10);
  p.dev.runUntilIdle();
  assert.equal(p.fired(VFIO_PCI_MSIX_IRQ_INDEX, 2), 1, 'ten completions written in one burst: one signal');
  await tq.submit(Array.from({ length: 40 }, () => ({ opcode: ds.OP_NOP })));
  await tq.reap(40);
  p.dev.runUntilIdle();
  assert.equal(
    p.fired(VFIO_PCI_MSIX_IRQ_INDEX, 2),
    3,
    'a long burst signals every 32 completions and at its end',
  );

  await tq.pageWrite32(ds.QP_IRQ_MODE, ds.IRQ_MODE_FLAGGED);
  await tq.submit([{ opcode: ds.OP_NOP }, { opcode: ds.OP_NOP }]);
  await tq.reap(2);
  p.dev.runUntilIdle();
  assert.equal(p.fired(VFIO_PCI_MSIX_IRQ_INDEX, 2), 3, 'mode 0 and no INTR: no interrupt');
  await tq.submit([{ opcode: ds.OP_NOP }, { opcode: ds.OP_NOP, flags: ds.FLAG_INTR }]);
  await tq.reap(2);
  p.dev.runUntilIdle();
  assert.equal(p.fired(VFIO_PCI_MSIX_IRQ_INDEX, 2), 4, 'INTR descriptor raised it');

  await tq.submit([{ opcode: ds.OP_NOP, flags: ds.FLAG_INTR }]);
  p.dev.dropInterrupts(1, VFIO_PCI_MSIX_IRQ_INDEX, 2);
  await tq.reap(1);
  p.dev.runUntilIdle();
  assert.equal(p.fired(VFIO_PCI_MSIX_IRQ_INDEX, 2), 4, 'injected drop swallowed exactly one');
  await tq.submit([{ opcode: ds.OP_NOP, flags: ds.FLAG_INTR }]);
  await tq.reap(1);
  p.dev.runUntilIdle();
  assert.equal(p.fired(VFIO_PCI_MSIX_IRQ_INDEX, 2), 5);
});

test('completions written right before the device stops still get their interrupt (CONTROL.ENABLE, bus master, a failed firmware load, a hang)', async () => {
  const stops: { name: string; stop: (p: Booted) => Promise<void> }[] = [
    { name: 'CONTROL.ENABLE cleared', stop: (p) => w32(p.bus, BAR0, ds.REG_CONTROL, 0) },
    {
      name: 'bus master cleared',
      stop: (p) => p.bus.write(CONFIG, PCI_COMMAND, new Uint8Array([PCI_COMMAND_MEMORY, 0])),
    },
    {
      name: 'a firmware load that fails',
      stop: async (p) => {
        await w32(p.bus, BAR0, ds.REG_FW_LEN, 0); // bad length: FW_STATUS error, no firmware running
        await w32(p.bus, BAR0, ds.REG_FW_CMD, ds.FW_CMD_LOAD);
      },
    },
    {
      // docs/SA-1.md: the hang ends the batch and signals it as it begins; a hung device signals nothing new.
      name: 'a hang',
      stop: async (p) => {
        p.dev.injectHang();
        assert.deepEqual(
          p.irqs,
          [
            [VFIO_PCI_MSIX_IRQ_INDEX, 2],
            [VFIO_PCI_MSIX_IRQ_INDEX, p.dev.options.numQueues],
            [VFIO_PCI_ERR_IRQ_INDEX, 0],
          ],
          'the owed queue vector first, then the HANG record and ERR; nothing after (below)',
        );
      },
    },
  ];
  for (const c of stops) {
    const p = await booted();
    const tq = await queue(p, 2, { sqSize: 16, cqSize: 16 });
    await tq.submit([
      { opcode: ds.OP_NOP, tag: 1n },
      { opcode: ds.OP_NOP, tag: 2n },
    ]);
    p.dev.step(); // the first completion is written; the queue has more, so its batch is still open
    assert.equal(tq.peek(0)?.tag, 1n, `${c.name}: the first completion written`);
    assert.equal(p.fired(VFIO_PCI_MSIX_IRQ_INDEX, 2), 0, `${c.name}: its batch not yet signalled`);
    await c.stop(p);
    p.dev.runUntilIdle();
    assert.equal(tq.peek(1), null, `${c.name}: the device stopped before the second`);
    assert.equal(
      p.fired(VFIO_PCI_MSIX_IRQ_INDEX, 2),
      1,
      `${c.name}: the written completion's batch is signalled once, without the device running again`,
    );
  }
});

test('a queue that goes to ERROR while it owes a coalesced interrupt still signals it', async () => {
  const p = await booted();
  const tq = await queue(p, 1, { sqSize: 16, cqSize: 16 });
  // A NOP, then a COPY from outside the queue's window (WINDOW_VIOLATION: the queue goes to ERROR). The NOP's
  // completion is owed an interrupt while the queue is still busy; the fault stops the queue in a later
  // round, and the owed signal must still go out (a client waiting on the vector would otherwise hang).
  const unmapped = 0x7000_0000_0000n;
  await tq.submit([
    { opcode: ds.OP_NOP, tag: 1n },
    { opcode: ds.OP_COPY, length: 64, src: unmapped, dst: at(DATA), tag: 2n },
  ]);
  const done = await tq.reap(2);
  assert.deepEqual(
    done.map((c) => [c.tag, c.status]),
    [
      [1n, ds.ST_OK],
      [2n, ds.ST_WINDOW_VIOLATION],
    ],
  );
  p.dev.runUntilIdle();
  assert.notEqual((await r32(p.bus, BAR0, qcfg(1, ds.Q_STATUS))) & ds.Q_STATUS_ERROR, 0, 'queue in ERROR');
  assert.equal(p.fired(VFIO_PCI_MSIX_IRQ_INDEX, 1), 1, "the burst's owed interrupt is signalled once");
});
