// Shared set-ups for the in-process device tests.

import * as ds from '../../../src/sim/model/datasheet.js';
import { boot, type HostMem, TestQueue } from './driver.js';
import { type InProc, inProcess } from './inproc.js';

export const FW_IOVA = 0x10_0000n;
export const HOST_IOVA = 0x20_0000n;
export const HOST_SIZE = 1 << 20;

export interface Booted extends InProc {
  host: HostMem;
}

/** A booted device (firmware running, CONTROL.ENABLE) with 1 MiB of host memory mapped at HOST_IOVA. */
export async function booted(opts: Parameters<typeof inProcess>[0] = {}): Promise<Booted> {
  const p = inProcess(opts);
  const fw = p.map(FW_IOVA, 64 * 1024);
  await boot(p.bus, fw);
  return { ...p, host: p.map(HOST_IOVA, HOST_SIZE) };
}

/** A sub-range of host memory as its own HostMem. */
export function slice(mem: HostMem, offset: number, length: number): HostMem {
  return { iova: mem.iova + BigInt(offset), view: mem.view.subarray(offset, offset + length) };
}

/**
 * Queue q with its rings in host memory at `ringOffset` (SQ then CQ) and a
 * window over the whole host mapping; the client rings through its page.
 */
export async function queue(
  p: Booted,
  q: number,
  opts: {
    sqSize?: number;
    cqSize?: number;
    ringOffset?: number;
    irqMode?: number;
    window?: { base: bigint; size: bigint };
  } = {},
): Promise<TestQueue> {
  const sqSize = opts.sqSize ?? 8;
  const cqSize = opts.cqSize ?? 8;
  const ringBytes = sqSize * ds.SQ_ENTRY_SIZE + cqSize * ds.CQ_ENTRY_SIZE;
  const tq = new TestQueue(
    p.bus,
    {
      q,
      mem: slice(p.host, opts.ringOffset ?? q * 0x1_0000, ringBytes),
      sqSize,
      cqSize,
      window: opts.window ?? { base: p.host.iova, size: BigInt(p.host.view.length) },
      devmemWindow: { base: 0, size: p.dev.options.devmemSize },
      irqMode: opts.irqMode,
      page: p.backing.pages[q],
    },
    p.dev.options.queueStride,
  );
  await tq.configure();
  return tq;
}
