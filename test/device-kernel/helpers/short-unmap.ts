// The one check both IOMMU backends make of an unmap: the kernel writes back how much it unmapped, and an
// answer of fewer bytes than are mapped there is an error that keeps the mapping (type1 before Linux 6.0
// skipped another mm's maps and still answered success).
import assert from 'node:assert/strict';
import type { KernelDevice } from '../../../src/device/kernel/device.js';
import { MemFd } from '../../../src/sys/memfd.js';
import type { Recorder } from './recorder.js';

/**
 * Maps 8 KiB at 0x1000000, has `request` write back `unmapped` at byte `offset` of its argument, and checks the
 * unmap is refused EIO naming `what` and the counts, twice (the second proves the table kept the mapping:
 * dropped, it would ask about 0 bytes), then that it goes through once the kernel unmaps it all. `kept` checks
 * the backend's own trace of the mapping while it is kept and after it goes (`gone`).
 */
export async function shortUnmapRefused(
  rec: Recorder,
  dev: KernelDevice,
  s: { request: number; offset: number; unmapped: bigint; what: string; kept?: (gone: boolean) => void },
): Promise<void> {
  using mem = MemFd.create('dma', { size: 2 * 4096 });
  await dev.dmaMap({ fd: mem.fd, offset: 0n, iova: 0x100_0000n, size: 8192n, read: true, write: true });
  const restore = rec.writeBack(s.request, s.offset, s.unmapped);
  const message = new RegExp(
    `${s.what} of iova 0x1000000: the kernel unmapped 0x${s.unmapped.toString(16)} of the 0x2000 bytes mapped there`,
  );
  for (let i = 0; i < 2; i++) {
    await assert.rejects(dev.dmaUnmap(0x100_0000n, 8192n), { code: 'EIO', message });
    s.kept?.(false);
  }
  restore();
  await dev.dmaUnmap(0x100_0000n, 8192n);
  s.kept?.(true);
}
