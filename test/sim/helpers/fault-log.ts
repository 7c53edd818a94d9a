// Reading the device's fault log and error state, shared by the queue-fault
// tests (faults.test.ts), the device-fault tests (device-faults.test.ts) and
// the DMA fault tests (short-dma, ring-cache):
// both check each fault's record, its queue's ERROR status and the fault vector.
import assert from 'node:assert/strict';
import * as ds from '../../../src/sim/model/datasheet.js';
import { decodeFaultRecord, type FaultRecord } from '../../../src/sim/model/faults.js';
import { VFIO_PCI_MSIX_IRQ_INDEX } from '../../../src/vfio/uapi/vfio.js';
import { BAR0, qcfg, r32 } from './driver.js';
import type { InProc } from './inproc.js';
import type { Booted } from './scenario.js';

/** The record FAULT_HEAD last wrote, read through BAR0 as a driver would. */
export async function lastFault(p: Pick<InProc, 'bus'>): Promise<FaultRecord> {
  const head = await r32(p.bus, BAR0, ds.REG_FAULT_HEAD);
  const log = await Promise.all(
    Array.from({ length: 64 }, (_, i) => p.bus.read(BAR0, ds.REG_FAULT_LOG + 4 * i, 4)),
  );
  const bytes = new Uint8Array(256);
  log.forEach((b, i) => {
    bytes.set(b, 4 * i);
  });
  return decodeFaultRecord(bytes, (head - 1) % 16);
}

/** Queue q is in ERROR with `code` as its last error, and not RUNNING. */
export async function expectQueueError(p: Booted, q: number, code: number): Promise<void> {
  const st = await r32(p.bus, BAR0, qcfg(q, ds.Q_STATUS));
  assert.equal(st & ds.Q_STATUS_ERROR, ds.Q_STATUS_ERROR, `queue ${q} in ERROR`);
  assert.equal(st >> 8, code, `Q_STATUS last error ${ds.STATUS_NAMES[code]}`);
  assert.equal(st & ds.Q_STATUS_RUNNING, 0, 'not RUNNING');
}

/** How often the fault vector (the MSI-X vector after the queues') fired. */
export const faultVector = (p: Booted): number => p.fired(VFIO_PCI_MSIX_IRQ_INDEX, p.dev.options.numQueues);
