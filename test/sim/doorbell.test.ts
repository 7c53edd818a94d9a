// Doorbell notification (datasheet §2.3 rev 2) on the real simulator:
// GET_REGION_IO_FDS hands out one ioeventfd per queue page, an idle device
// sets Q_NOTIFY.KICK_NEEDED, a kick wakes it, a client that never kicks is
// still served.
import assert from 'node:assert/strict';
import { readlinkSync } from 'node:fs';
import { test } from 'node:test';
import * as ds from '../../src/sim/model/datasheet.js';
import { encodeDmaBufRequest } from '../../src/sim/model/slices.js';
import { type Fd, Mapping, native } from '../../src/sys/index.js';
import {
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_BAR2_REGION_INDEX,
} from '../../src/vfio/uapi/vfio.js';
import { vfio_user_region_io_fds_request } from '../../src/vfio/user/messages.js';
import { VFIO_USER_DEVICE_GET_REGION_IO_FDS } from '../../src/vfio/user/protocol.js';
import { decodeRegionIoFdsReply, VFIO_USER_IO_FD_TYPE_IOEVENTFD } from '../../src/vfio/user/region-io-fds.js';
import { boot, TestQueue } from './helpers/driver.js';
import { openFds, type Rig, rig, until } from './helpers/real.js';

const STRIDE = 65536;
const FW = 0x10_0000n;
const HOST = 0x20_0000n;

function closeAll(fds: Fd[]): void {
  for (const fd of fds) fd.close();
}

test('GET_REGION_IO_FDS: one eventfd per queue page at its SQ_TAIL; other regions none; bad requests EINVAL', async () => {
  const before = openFds();
  const r = await rig({ numQueues: 4 });
  try {
    const { subRegions, fds } = await r.client.regionIoFds(VFIO_PCI_BAR2_REGION_INDEX);
    assert.equal(subRegions.length, 4);
    assert.equal(fds.length, 4, 'one fd per queue page, none shared');
    subRegions.forEach((s, q) => {
      assert.equal(s.offset, BigInt(q * STRIDE + ds.QP_SQ_TAIL), `queue ${q} sub-region is its SQ_TAIL`);
      assert.equal(s.size, 4n);
      assert.equal(s.type, VFIO_USER_IO_FD_TYPE_IOEVENTFD);
      assert.equal(s.flags, 0, 'no datamatch');
      assert.equal(readlinkSync(`/proc/self/fd/${fds[s.fdIndex]!.fd}`), 'anon_inode:[eventfd]');
    });
    assert.equal(new Set(subRegions.map((s) => s.fdIndex)).size, 4);
    closeAll(fds);

    const bar0 = await r.client.regionIoFds(VFIO_PCI_BAR0_REGION_INDEX);
    assert.deepEqual([bar0.subRegions.length, bar0.fds.length], [0, 0], 'BAR0 has no io fds');

    // argsz too small for the entries: the head alone says how much is needed, and no fds come.
    const small = await r.client.request(
      VFIO_USER_DEVICE_GET_REGION_IO_FDS,
      vfio_user_region_io_fds_request.encode({ argsz: 16, index: 2 }),
    );
    const head = decodeRegionIoFdsReply(small.payload);
    assert.deepEqual([head.argsz, head.count, head.subRegions, small.fds.length], [16 + 4 * 40, 4, null, 0]);

    for (const bad of [{ flags: 1 }, { count: 1 }, { index: 99 }]) {
      await assert.rejects(
        r.client.request(
          VFIO_USER_DEVICE_GET_REGION_IO_FDS,
          vfio_user_region_io_fds_request.encode({ argsz: 256, index: 2, ...bad }),
        ),
        { code: 'EINVAL' },
        JSON.stringify(bad),
      );
    }
  } finally {
    await r.close();
  }
  assert.equal(openFds(), before, 'every io fd was closed');
});

/** A booted rig with queue 0 configured through its mapped slice page. */
async function queueRig(idlePollUs: number) {
  const r: Rig = await rig({ numQueues: 4, idlePollUs });
  const fw = await r.map(FW, 64 * 1024);
  await boot(r.bus, fw);
  const host = await r.map(HOST, 1 << 20);
  const reply = await r.client.feature({
    flags: VFIO_DEVICE_FEATURE_GET,
    feature: VFIO_DEVICE_FEATURE_DMA_BUF,
    data: encodeDmaBufRequest(VFIO_PCI_BAR2_REGION_INDEX, [{ offset: 0n, length: BigInt(STRIDE) }]),
  });
  const pageFd = reply.fds[0]!;
  const page = Mapping.map(pageFd, { length: STRIDE });
  const words = new Int32Array(page.buffer, 0, ds.QP_REGISTERS_END / 4);
  const tq = new TestQueue(
    r.bus,
    { q: 0, mem: { iova: HOST, view: host.view.subarray(0, 0x1000) }, sqSize: 16, cqSize: 16, page: page.u8 },
    STRIDE,
  );
  const kickNeeded = (): boolean => (Atomics.load(words, ds.QP_Q_NOTIFY / 4) & ds.Q_NOTIFY_KICK_NEEDED) !== 0;
  /** Write one NOP, store SQ_TAIL (Atomics: a full fence), then kick only if the device asks for it. */
  const nop = (tag: bigint, kickFd: Fd | null): boolean => {
    void tq.submit([{ opcode: ds.OP_NOP, tag }], false);
    Atomics.store(words, ds.QP_SQ_TAIL / 4, tq.tail);
    const kick = kickFd !== null && kickNeeded();
    if (kick) native.eventfdWrite(kickFd.fd, 1);
    return kick;
  };
  const close = async (): Promise<void> => {
    page.unmap();
    pageFd.close();
    await r.close();
  };
  return { r, tq, kickNeeded, nop, close };
}

test('an idle device sets KICK_NEEDED; a kick wakes it well inside its (1 s) idle poll interval', async () => {
  const before = openFds();
  const q = await queueRig(1_000_000);
  const { fds } = await q.r.client.regionIoFds(VFIO_PCI_BAR2_REGION_INDEX);
  try {
    await q.tq.configure();
    await until(q.kickNeeded, 'KICK_NEEDED on the idle, enabled queue', 5000);
    assert.equal(q.nop(1n, fds[0]!), true, 'the sleeping device asked for a kick');
    // Only the kick can explain a completion within 400 ms: the device's next idle poll is 1 s away.
    await until(() => q.tq.peek(0) !== null, 'the kicked NOP completes', 400);
    assert.equal(q.tq.peek(0)?.status, ds.ST_OK);
    await until(q.kickNeeded, 'KICK_NEEDED set again once idle', 5000);
  } finally {
    closeAll(fds);
    await q.close();
  }
  assert.equal(openFds(), before);
});

test('a client that never kicks is still served (kick fds handed out, default idle poll)', async () => {
  const before = openFds();
  const q = await queueRig(50);
  const { fds } = await q.r.client.regionIoFds(VFIO_PCI_BAR2_REGION_INDEX);
  try {
    await q.tq.configure();
    await until(q.kickNeeded, 'KICK_NEEDED on the idle queue', 5000);
    for (let i = 1; i <= 3; i++) {
      q.nop(BigInt(i), null);
      await until(() => q.tq.peek(i - 1) !== null, `un-kicked NOP ${i} completes`, 5000);
    }
    assert.ok((await q.r.sim.stats()).armedSleeps > 0, 'the device slept armed in between');
  } finally {
    closeAll(fds);
    await q.close();
  }
  assert.equal(openFds(), before);
});
