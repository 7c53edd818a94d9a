// Kernel backend, broker upgrade: what a KernelDevice hands over and how the
// new process adopts it (src/device/kernel/handover.ts), against the
// recorder with canned replies — the argument bytes and the ioctl sequence
// only. That DMA still lands after a real upgrade is proven in the guest
// (test/kernel/guest/upgrade.test.ts, npm run test:kernel).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { setImmediate as setImmediatePromise } from 'node:timers/promises';
import { adoptKernelDevice } from '../../src/device/kernel/handover.js';
import { openKernelDevice } from '../../src/device/kernel/open.js';
import { EventFd } from '../../src/sys/eventfd.js';
import type { Fd } from '../../src/sys/fd.js';
import { MemFd } from '../../src/sys/memfd.js';
import { native } from '../../src/sys/native.js';
import { VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX } from '../../src/vfio/uapi/vfio.js';
import { until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { kernelError, Recorder } from './helpers/recorder.js';
import { BDF, irqSet, msixInfo, NR, scratchSysfs, standardReplies } from './helpers/replies.js';

after(trackFdLeaks());

/** An opened device with one map, its handover, and the fds (dups, as SCM_RIGHTS would deliver). */
async function handedOver(rec: Recorder) {
  standardReplies(rec);
  using sysfs = scratchSysfs();
  const dev = await openKernelDevice({ bdf: BDF, sys: rec, sysfsRoot: sysfs.root, log: () => {} });
  using mem = MemFd.create('dma', { size: 4096 });
  await dev.dmaMap({ fd: mem.fd, offset: 0n, iova: 0x100_0000n, size: 4096n, read: true, write: true });
  await dev.region(0);
  const fds: Fd[] = [];
  const state = dev.handover((fd) => fds.push(fd.dup()) - 1);
  return { dev, state, fds };
}

test('adopting checks every handed map is still there: a one-page probe map at its IOVA must be refused EEXIST', async () => {
  const rec = new Recorder();
  const { dev, state, fds } = await handedOver(rec);
  try {
    assert.deepEqual(state.domain.maps, [{ iova: 0x100_0000n, size: 4096n, byAddress: false }]);
    rec.replies.set(NR.IOMMU_IOAS_MAP, () => {
      throw kernelError('EEXIST');
    });
    const adopted = await adoptKernelDevice(state, (i) => fds[i]!, { sys: rec });
    // struct iommu_ioas_map { u32 size, flags, ioas_id, __reserved; u64 user_va, length, iova }: FIXED|READABLE
    const probe = rec.ioctls(NR.IOMMU_IOAS_MAP);
    assert.equal(probe.length, 1, 'the map was probed');
    const a = new DataView((probe[0]!.arg as Uint8Array).buffer);
    assert.deepEqual(
      [a.getUint32(4, true), a.getBigUint64(24, true), a.getBigUint64(32, true)],
      [5, 4096n, 0x100_0000n],
    );
    // Not this process's until the commit: nothing that changes the device, and close() only closes fds.
    await assert.rejects(adopted.dmaUnmap(0x100_0000n, 4096n), { code: 'EBUSY' });
    const beforeClose = rec.calls.length;
    await adopted.close();
    assert.deepEqual(
      rec.lines(beforeClose).filter((l) => l.startsWith('ioctl')),
      [],
      'closing an adopted device issues no unmap, detach or destroy',
    );
  } finally {
    await dev.close();
  }
});

test('a handed map that is not there any more refuses the adoption, and the probe map is undone', async () => {
  const rec = new Recorder();
  const { dev, state, fds } = await handedOver(rec);
  try {
    rec.replies.set(NR.IOMMU_IOAS_MAP, () => 0); // the probe went through: nothing was mapped there
    const unmaps = rec.ioctls(NR.IOMMU_IOAS_UNMAP).length;
    await assert.rejects(
      adoptKernelDevice(state, (i) => fds[i]!, { sys: rec }),
      {
        code: 'ENODEV',
        message: /the maps at 0x1000000 are not there any more/,
      },
    );
    assert.equal(rec.ioctls(NR.IOMMU_IOAS_UNMAP).length, unmaps + 1, 'the probe map was undone');
    assert.ok(
      fds.every((f) => f.closed),
      'every fd received is closed',
    );
  } finally {
    await dev.close();
  }
});

test('after the commit: IOMMU_IOAS_CHANGE_PROCESS (struct iommu_ioas_change_process { u32 size, __reserved })', async () => {
  const rec = new Recorder();
  const { dev, state, fds } = await handedOver(rec);
  try {
    rec.replies.set(NR.IOMMU_IOAS_MAP, () => {
      throw kernelError('EEXIST');
    });
    const adopted = await adoptKernelDevice(state, (i) => fds[i]!, { sys: rec });
    rec.replies.set(0x3b92, () => 0);
    assert.match(adopted.takeOver(), /^moved to pid \d+ \(IOMMU_IOAS_CHANGE_PROCESS, 1 maps\)/);
    assert.deepEqual([...rec.argOf(0x3b92)], [8, 0, 0, 0, 0, 0, 0, 0]);
    await adopted.dmaUnmap(0x100_0000n, 4096n); // the device is this process's now
    await adopted.close();
  } finally {
    await dev.close();
  }
});

test('IOMMU_IOAS_CHANGE_PROCESS refused (by-address maps: EINVAL; old kernel: ENOTTY): the accounting stays, and the status says why', async () => {
  for (const [code, why] of [
    ['EINVAL', /stayed with the previous broker process: some maps are by address/],
    ['ENOTTY', /stayed with the previous broker process: this kernel has no IOMMU_IOAS_CHANGE_PROCESS/],
  ] as const) {
    const rec = new Recorder();
    const { dev, state, fds } = await handedOver(rec);
    try {
      rec.replies.set(NR.IOMMU_IOAS_MAP, () => {
        throw kernelError('EEXIST');
      });
      const adopted = await adoptKernelDevice(state, (i) => fds[i]!, { sys: rec });
      rec.replies.set(0x3b92, () => {
        throw kernelError(code);
      });
      assert.match(adopted.takeOver(), why);
      assert.match(adopted.pinnedAccounting ?? '', why);
      await adopted.close();
    } finally {
      await dev.close();
    }
  }
});

// An MSI-X index the kernel sizes once (NORESIZE) that the old broker enabled must not be enabled again whole by
// the new one: fd -1 for every vector not asked would unwire the old broker's leases. The handover says which
// indexes are enabled; from a broker that does not say, each is taken as enabled.
test('adopted: an MSI-X index the old broker enabled is wired a block at a time; one it did not, whole', async () => {
  for (const [enabled, whole] of [
    [[2], false],
    [[], true],
    [undefined, false],
  ] as const) {
    const rec = new Recorder();
    const { dev, state, fds } = await handedOver(rec);
    try {
      msixInfo(rec, 4, 0x9);
      if (enabled === undefined) delete state.irqsEnabled;
      else state.irqsEnabled = [...enabled];
      rec.replies.set(NR.IOMMU_IOAS_MAP, () => {
        throw kernelError('EEXIST'); // the handed map is still there
      });
      const adopted = await adoptKernelDevice(state, (i) => fds[i]!, { sys: rec });
      try {
        adopted.takeOver();
        using a = new EventFd();
        const from = rec.ioctls(NR.VFIO_DEVICE_SET_IRQS).length;
        await adopted.setIrqs(2, 2, [a.fd]);
        // takeOver() also wires the REQ irq (index 4): the MSI-X block is the one for index 2.
        const sent = rec
          .ioctls(NR.VFIO_DEVICE_SET_IRQS)
          .slice(from)
          .map((c) => c.arg as Uint8Array)
          .filter((arg) => new DataView(arg.buffer).getUint32(8, true) === 2);
        assert.equal(sent.length, 1);
        assert.deepEqual(
          sent[0],
          whole ? irqSet(2, 0, [-1, -1, a.fd.fd, -1]) : irqSet(2, 2, [a.fd.fd]),
          `irqsEnabled ${JSON.stringify(enabled)}`,
        );
      } finally {
        await adopted.close();
      }
    } finally {
      await dev.close();
    }
  }
});

/** The eventfd the device wired to the irq `index` (VFIO_DEVICE_SET_IRQS: struct vfio_irq_set's data at 20). */
function wiredEventFd(rec: Recorder, index: number): number {
  const set = rec.ioctls(NR.VFIO_DEVICE_SET_IRQS).find((c) => {
    const arg = c.arg as Uint8Array;
    return new DataView(arg.buffer, arg.byteOffset).getUint32(8, true) === index;
  });
  assert.ok(set, `the device wired irq ${index}`);
  const arg = set.arg as Uint8Array;
  return new DataView(arg.buffer, arg.byteOffset).getInt32(20, true);
}

const eventfdCount = (fd: number) =>
  Number(/^eventfd-count:\s+(\w+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]);

// The kernel reports an AER error once, to the eventfd wired to ERR. During an upgrade's transfer the old broker
// leaves its REQ and ERR eventfds unread and hands them over; the new broker watches them from its commit, so an
// error that came in between is heard by the broker that carries on. Before, the new broker wired eventfds of its
// own at its commit, and an error signalled before that went to the old one, which was exiting.
test('the REQ and ERR eventfds are handed over: a signal left unread during the transfer is heard after the commit', async () => {
  const rec = new Recorder();
  const { dev, state, fds } = await handedOver(rec);
  try {
    const err = wiredEventFd(rec, VFIO_PCI_ERR_IRQ_INDEX);
    assert.deepEqual(
      state.signals?.map((s) => s.index),
      [VFIO_PCI_REQ_IRQ_INDEX, VFIO_PCI_ERR_IRQ_INDEX],
    );
    const oldHeard: string[] = [];
    dev.on('error-reported', (why: string) => oldHeard.push(why));
    dev.holdSignals();
    native.eventfdWrite(err, 1n); // the kernel's signal, mid-transfer
    rec.replies.set(NR.IOMMU_IOAS_MAP, () => {
      throw kernelError('EEXIST'); // the handed map is still there
    });
    const adopted = await adoptKernelDevice(state, (i) => fds[i]!, { sys: rec });
    try {
      const heard: string[] = [];
      adopted.on('error-reported', (why: string) => heard.push(why));
      await setImmediatePromise();
      assert.equal(eventfdCount(err), 1, 'nobody read it before the commit');
      const wiredBefore = rec.ioctls(NR.VFIO_DEVICE_SET_IRQS).length;
      adopted.takeOver();
      await until('the new owner to hear the error', () => heard.length === 1);
      assert.match(heard[0]!, /uncorrectable PCIe error/);
      assert.deepEqual(oldHeard, [], 'the old broker did not');
      assert.equal(
        rec.ioctls(NR.VFIO_DEVICE_SET_IRQS).length,
        wiredBefore,
        'the handed eventfds are watched as they are wired: nothing wired anew',
      );
    } finally {
      await adopted.close();
    }
  } finally {
    await dev.close();
  }
});

// A rollback: the new broker adopted the device and went away before the commit (its copies of the eventfds
// closed with it); the old broker reads its signals again, with what came while they were held.
test('a REQ signalled while the signals are held is heard once they are watched again (a rollback)', async () => {
  const rec = new Recorder();
  const { dev, state, fds } = await handedOver(rec);
  try {
    const req = wiredEventFd(rec, VFIO_PCI_REQ_IRQ_INDEX);
    const heard: string[] = [];
    dev.on('release-requested', (why: string) => heard.push(why));
    dev.holdSignals();
    rec.replies.set(NR.IOMMU_IOAS_MAP, () => {
      throw kernelError('EEXIST');
    });
    const adopted = await adoptKernelDevice(state, (i) => fds[i]!, { sys: rec });
    await adopted.close(); // refused, or killed: never taken over
    native.eventfdWrite(req, 1n);
    await setImmediatePromise();
    assert.equal(eventfdCount(req), 1, 'held: left in the eventfd');
    await dev.unholdSignals();
    await until('the request to be heard', () => heard.length === 1);
    assert.match(heard[0]!, /the kernel asks for the device back/);
  } finally {
    await dev.close();
  }
});

// From a broker that hands no signals over (an older release), the new one wires its own at its commit.
test('a handover without signals: takeOver() wires REQ and ERR anew', async () => {
  const rec = new Recorder();
  const { dev, state, fds } = await handedOver(rec);
  try {
    for (const s of state.signals ?? []) fds[s.fd]!.close();
    delete state.signals;
    rec.replies.set(NR.IOMMU_IOAS_MAP, () => {
      throw kernelError('EEXIST');
    });
    const adopted = await adoptKernelDevice(state, (i) => fds[i]!, { sys: rec });
    try {
      const from = rec.ioctls(NR.VFIO_DEVICE_SET_IRQS).length;
      adopted.takeOver();
      await until('REQ and ERR to be wired', () => rec.ioctls(NR.VFIO_DEVICE_SET_IRQS).length === from + 2);
      const indexes = rec
        .ioctls(NR.VFIO_DEVICE_SET_IRQS)
        .slice(from)
        .map((c) => {
          const arg = c.arg as Uint8Array;
          return new DataView(arg.buffer, arg.byteOffset).getUint32(8, true);
        });
      assert.deepEqual(indexes, [VFIO_PCI_REQ_IRQ_INDEX, VFIO_PCI_ERR_IRQ_INDEX]);
    } finally {
      await adopted.close();
    }
  } finally {
    await dev.close();
  }
});
