// DMA to client memory that shrank under the device (datasheet rev 2 §7),
// through the broker: a lease client maps its own memfd, a COPY from it
// completes OK; the client truncates the memfd; the next COPY from it
// completes as IOMMU_FAULT (the queue in ERROR, the fault in the lease's
// info), never OK with zeros. (Maps that are short at map time are refused
// at the broker's edge: test/broker/device-errors.test.ts.)
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { connect, DeviceStatusError, Sa1Queue } from '../../src/index.js';
import { MemFd } from '../../src/sys/index.js';
import { VFIO_USER_F_DMA_REGION_READ, VFIO_USER_F_DMA_REGION_WRITE } from '../../src/vfio/user/protocol.js';
import { startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test('a client memfd truncated under the device: the COPY from it is IOMMU_FAULT, not zeros', async () => {
  const rig = await startRig({ sim: { numQueues: 2 } });
  const lease = await connect({ socket: rig.socket });
  try {
    const q = await Sa1Queue.create(lease, { entries: 8 });
    const dst = await lease.dma.alloc(4096);
    const win = lease.info.iovaWindow!;
    const iova = win.base + win.size / 2n;
    using mem = MemFd.create('shrinking', { size: 0x1_0000 });
    {
      using view = mem.map();
      view.u8.fill(0x5a);
    }
    await lease.client.dmaMap({
      fd: mem.fd,
      iova,
      size: 0x1_0000,
      flags: VFIO_USER_F_DMA_REGION_READ | VFIO_USER_F_DMA_REGION_WRITE,
    });
    assert.equal((await q.copy(iova, dst.iova, 256)).status, 'OK');
    assert.ok(dst.u8.subarray(0, 256).every((b) => b === 0x5a));
    dst.u8.fill(0x11);
    mem.truncate(0);
    const err = await q.copy(iova + 0x1000n, dst.iova, 256).then(
      () => assert.fail('the COPY from truncated memory completed OK'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof DeviceStatusError, String(err));
    assert.equal(err.completion.status, 'IOMMU_FAULT');
    assert.ok(
      dst.u8.subarray(0, 256).every((b) => b === 0x11),
      'nothing was written',
    );
    assert.equal(q.error, 4, 'the queue is in ERROR (IOMMU_FAULT)');
    // The broker drains the device's fault log when the fault vector fires: wait for it (bounded).
    let info = await lease.refreshInfo();
    for (let i = 0; i < 500 && !info.faults.length; i++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
      info = await lease.refreshInfo();
    }
    assert.ok(
      info.faults.some((f) => f.name === 'IOMMU_FAULT' && f.address === iova + 0x1000n),
      `the fault is in the lease's info: ${JSON.stringify(info.faults, (_k, v) => (typeof v === 'bigint' ? v.toString(16) : v))}`,
    );
    await q.close();
  } finally {
    lease.close();
    await rig.close();
  }
});
