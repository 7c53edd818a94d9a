// ERR means unrecoverable, as QEMU treats it (vm_stop on any signal): a
// queue's fault never signals a lease's ERR irq. A stock client (no
// devlease.request in VERSION, as QEMU) sees the fault in its queue page and completion only;
// a devlease client also through devlease's notice irq (index 5), which a
// stock client is never offered. A hang still signals ERR.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { EventFd } from '../../src/sys/index.js';
import {
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_NUM_IRQS,
} from '../../src/vfio/uapi/vfio.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

const NOTICE = 5;
const wire = (c: VfioUserClient, index: number, efd: EventFd) =>
  c.setIrqs({
    flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
    index,
    start: 0,
    count: 1,
    fds: [efd.fd],
  });
const settle = () => new Promise((r) => setTimeout(r, 300));

test('a queue fault: no ERR for a stock client or a devlease one; the devlease client hears the notice irq; a hang signals ERR', async () => {
  const rig = await startRig({ sim: { numQueues: 4 }, config: { sa1: { heartbeat_ms: 50 } } });
  rig.broker.leases.log = () => {};
  const stock = await VfioUserClient.connect(rig.socket);
  const dl = await VfioUserClient.connect(rig.socket, { capabilities: { devlease: { request: {} } } });
  const [stockErr, dlErr, dlNotice] = [new EventFd(), new EventFd(), new EventFd()];
  try {
    // The stock client sees the standard five irq indexes only; the devlease one is told of the sixth.
    assert.equal((await stock.deviceInfo()).num_irqs, VFIO_PCI_NUM_IRQS);
    await assert.rejects(stock.irqInfo(NOTICE), { code: 'EINVAL' });
    assert.equal((stock.serverCapabilities.raw.devlease as { noticeIrq?: number }).noticeIrq, undefined);
    assert.equal((await dl.deviceInfo()).num_irqs, VFIO_PCI_NUM_IRQS + 1);
    assert.equal((dl.serverCapabilities.raw.devlease as { noticeIrq?: number }).noticeIrq, NOTICE);
    assert.equal((await dl.irqInfo(NOTICE)).count, 1);
    await wire(stock, VFIO_PCI_ERR_IRQ_INDEX, stockErr);
    await wire(dl, VFIO_PCI_ERR_IRQ_INDEX, dlErr);
    await wire(dl, NOTICE, dlNotice);

    const leases = rig.broker.leases.all();
    const queueOf = (n: number) => leases[n]!.resources.queue!;
    // A WINDOW_VIOLATION record on each client's queue.
    await rig.sim.inject({ kind: 'fault', queue: queueOf(0), code: 3, iova: 0x1000n });
    await rig.sim.inject({ kind: 'fault', queue: queueOf(1), code: 3, iova: 0x2000n });
    await until('both faults recorded', () => leases.every((l) => l.faults.length === 1));
    await until('the devlease notice', () => dlNotice.read() !== null);
    await settle();
    assert.equal(stockErr.read(), null, 'no ERR for the stock client: QEMU would stop the VM');
    assert.equal(dlErr.read(), null, 'no ERR for the devlease client either');

    // A hang is unrecoverable for the lease: ERR, for both clients.
    await rig.sim.inject({ kind: 'hang' });
    await until('ERR for the stock client on a hang', () => stockErr.read() !== null);
    await until('ERR for the devlease client on a hang', () => dlErr.read() !== null);
  } finally {
    await stock.close();
    await dl.close();
    for (const e of [stockErr, dlErr, dlNotice]) e.close();
    await rig.close();
  }
});
