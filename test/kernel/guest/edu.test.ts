// Runs INSIDE a kernel-rig guest (npm run test:kernel), never on the host.
// The kernel VFIO backend against the real kernel: QEMU's edu device bound to
// vfio-pci behind the emulated Intel IOMMU. Path choice (iommufd + cdev on
// the custom kernel, group + type1v2 container on Debian's stock one), real
// DMA through the IOMMU both ways with the MSI eventfd, a DMA to an unmapped
// IOVA refused by the IOMMU, BAR mmap, passed-in fds, release on close, and
// an edu `dma` lease through the broker. The generic driver over edu (no
// reset method, its INTx relayed) is edu-generic.test.ts.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Broker } from '../../../src/broker/broker.js';
import { configFromObject, defaultConfig } from '../../../src/broker/config.js';
import { connect } from '../../../src/client/index.js';
import type { KernelDevice } from '../../../src/device/kernel/device.js';
import { IommufdIoas } from '../../../src/device/kernel/iommufd.js';
import { openKernelDevice } from '../../../src/device/kernel/open.js';
import { realSys } from '../../../src/device/kernel/sys.js';
import {
  EDU,
  EDU_DMA_BUFFER,
  EDU_DMA_CMD,
  EDU_IRQ,
  EDU_WINDOW,
  EduDriver,
} from '../../../src/drivers/edu.js';
import { EventFd, MemFd } from '../../../src/sys/index.js';
import { VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX } from '../../../src/vfio/uapi/vfio.js';
import { trackFdLeaks } from '../../helpers/fds.js';
import { bdf, guestConfig as config, inEduGuest } from './fixtures/guest.js';

const paths = config === 'iommufd' ? (['auto', 'container'] as const) : (['auto'] as const);
const BAR0 = 0;
const here = dirname(fileURLToPath(import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

after(trackFdLeaks());

inEduGuest();

async function open(path: 'auto' | 'container' | 'iommufd' = 'auto'): Promise<KernelDevice> {
  return openKernelDevice({ bdf, path, log: () => {} });
}

/** Waits for `cond` (bounded, so a stuck device fails the test with `what` instead of hanging it). */
async function until(what: string, cond: () => Promise<boolean> | boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** One edu DMA: `src` and `dst` are IOVAs or edu's buffer address; waits for it to finish. */
async function eduDma(dev: KernelDevice, src: bigint, dst: bigint, count: number, toRam: boolean) {
  await dev.write64(BAR0, EDU.DMA_SRC, src);
  await dev.write64(BAR0, EDU.DMA_DST, dst);
  await dev.write64(BAR0, EDU.DMA_COUNT, BigInt(count));
  const cmd = EDU_DMA_CMD.START | EDU_DMA_CMD.IRQ | (toRam ? EDU_DMA_CMD.TO_RAM : 0);
  await dev.write64(BAR0, EDU.DMA_CMD, BigInt(cmd));
  await until(
    'the edu DMA to finish',
    async () => !((await dev.read32(BAR0, EDU.DMA_CMD)) & EDU_DMA_CMD.START),
  );
}

test('path choice: iommufd + vfio cdev when the kernel has both, else the type1v2 container, with the reason', async () => {
  const dev = await open();
  try {
    if (config === 'iommufd') {
      assert.equal(dev.transport, 'kernel-iommufd');
      assert.match(dev.path.chosen, /^kernel-iommufd: \/dev\/vfio\/devices\/vfio\d+ bound to \/dev\/iommu/);
      assert.ok(dev.domain instanceof IommufdIoas);
      assert.equal(dev.domain.mapFile, true, 'Linux 7.3 has IOMMU_IOAS_MAP_FILE (6.13+)');
    } else {
      assert.equal(dev.transport, 'kernel-container');
      assert.match(
        dev.path.reason,
        /fell back to the legacy container: .*(vfio-dev|\/dev\/iommu|vfio\/devices)/,
      );
    }
    assert.deepEqual([dev.ids.vendor, dev.ids.device], [0x1234, 0x11e8]);
    const bar = await dev.region(BAR0);
    assert.equal(bar.size, 1n << 20n);
    assert.equal(bar.flags & 0x7, 0x7, 'BAR0 is readable, writable and mmappable');
    assert.equal(await dev.irqCount(VFIO_PCI_MSI_IRQ_INDEX), 1, 'edu has one MSI vector');
    assert.equal(await dev.irqCount(VFIO_PCI_MSIX_IRQ_INDEX), 0, 'and no MSI-X');
    assert.equal(dev.dmaBuf, true, 'both kernels export BAR ranges as dma-bufs (CONFIG_VFIO_PCI_DMABUF)');
    assert.deepEqual(dev.capabilities, { mappableSlices: false, revocableSlices: false });
    const msi = 0xfee0_0000n;
    assert.ok(
      !dev.iovaRanges().some((r) => r.start <= msi && msi <= r.last),
      'the IOVA ranges leave out the MSI window',
    );
  } finally {
    await dev.close();
  }
});

for (const path of paths) {
  test(`${path}: edu boots (ID, liveness) and DMAs through the IOMMU both ways, completing on the MSI eventfd`, async () => {
    const dev = await open(path);
    using mem = MemFd.create('edu-dma', { size: 2 * 4096 });
    using ev = new EventFd();
    using map = mem.map();
    try {
      await new EduDriver(dev, defaultConfig()).boot();
      const iova = EDU_WINDOW.base;
      await dev.dmaMap({ fd: mem.fd, offset: 0n, iova, size: 8192n, read: true, write: true });
      await dev.setIrqs(VFIO_PCI_MSI_IRQ_INDEX, 0, [ev.fd]);
      const text = new TextEncoder().encode(`devlease ${path} ${config} DMA check`);
      map.u8.set(text, 0);
      await eduDma(dev, iova, EDU_DMA_BUFFER, text.byteLength, false);
      await eduDma(dev, EDU_DMA_BUFFER, iova + 4096n, text.byteLength, true);
      assert.deepEqual(map.u8.slice(4096, 4096 + text.byteLength), text);
      let irqs = 0n;
      await until('the MSI eventfd', () => {
        irqs += ev.read() ?? 0n;
        return irqs > 0n;
      });
      assert.ok((await dev.read32(BAR0, EDU.IRQ_STATUS)) & EDU_IRQ.DMA);
      await dev.write32(BAR0, EDU.IRQ_ACK, EDU_IRQ.DMA);
      await dev.dmaUnmap(iova, 8192n);
      await dev.disableIrqs(VFIO_PCI_MSI_IRQ_INDEX);
    } finally {
      await dev.close();
    }
  });

  test(`${path}: a DMA to an unmapped IOVA does not reach memory, and the IOMMU reports the fault`, async () => {
    const dev = await open(path);
    using mem = MemFd.create('edu-dma', { size: 4096 });
    using map = mem.map();
    const kmsg = openSync('/dev/kmsg', constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      await new EduDriver(dev, defaultConfig()).boot();
      const iova = EDU_WINDOW.base + 0x10000n;
      await dev.dmaMap({ fd: mem.fd, offset: 0n, iova, size: 4096n, read: true, write: true });
      map.u8.fill(0xab, 0, 64);
      await eduDma(dev, iova, EDU_DMA_BUFFER, 64, false); // edu's buffer now holds 0xab
      await dev.dmaUnmap(iova, 4096n);
      map.u8.fill(0x11, 0, 64);
      drainKmsg(kmsg);
      await eduDma(dev, EDU_DMA_BUFFER, iova, 64, true);
      assert.ok(
        map.u8.subarray(0, 64).every((b) => b === 0x11),
        'memory unmapped from the IOVA was written',
      );
      await dmarFault(kmsg, iova);
    } finally {
      closeSync(kmsg);
      await dev.close();
    }
  });
}

/** Wait for the IOMMU's DMAR fault report for `iova` in the kernel log (read through /dev/kmsg). */
async function dmarFault(kmsg: number, iova: bigint): Promise<void> {
  const addr = `0x${iova.toString(16)}`;
  let lines: string[] = [];
  await until(`a DMAR fault for ${addr} in the kernel log`, () => {
    lines = lines.concat(drainKmsg(kmsg).filter((l) => /DMAR/.test(l)));
    return lines.some((l) => l.includes(addr));
  });
}

/** Kernel log records not read yet through `fd` (/dev/kmsg opened non-blocking). */
function drainKmsg(fd: number): string[] {
  const out: string[] = [];
  const buf = Buffer.alloc(8192);
  for (;;) {
    try {
      const n = readSync(fd, buf);
      out.push(buf.toString('utf8', 0, n));
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'EAGAIN') return out;
      if (code === 'EPIPE') continue; // records were overwritten while we read: carry on from the next
      throw err;
    }
  }
}

test('BAR0 mmap reaches the registers (32-bit loads and stores)', async () => {
  const dev = await open();
  try {
    const bar = await dev.mapRegion(BAR0, 0n, 4096n);
    const regs = new Uint32Array(bar.u8.buffer, 0, 64);
    assert.equal(regs[EDU.ID / 4], 0x010000ed);
    regs[EDU.LIVENESS / 4] = 0x0f0f_1234;
    assert.equal(await dev.read32(BAR0, EDU.LIVENESS), ~0x0f0f_1234 >>> 0);
  } finally {
    await dev.close(); // unmaps the BAR too
  }
});

if (config === 'iommufd') {
  test('fds opened by a launcher (--device-fd / --iommufd-fd) drive the device, and close releases it for the next opener', async () => {
    for (let round = 0; round < 2; round++) {
      const deviceFd = realSys.open('/dev/vfio/devices/vfio0');
      const iommufdFd = realSys.open('/dev/iommu');
      const dev = await openKernelDevice({ deviceFd, iommufdFd, log: () => {} });
      try {
        assert.equal(dev.transport, 'kernel-iommufd');
        assert.match(dev.path.reason, /passed in/);
        assert.equal(await dev.read32(BAR0, EDU.ID), 0x010000ed);
      } finally {
        await dev.close();
      }
      assert.ok(deviceFd.closed && iommufdFd.closed);
    }
  });
}

test('broker: an edu `dma` lease over the kernel device — BAR0 through the broker, DMA in the window, MSI to the client', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-edu-'));
  const dev = await open();
  const audit: string[] = [];
  let broker: Broker | null = null;
  try {
    broker = await Broker.start({
      // Relayed memory allowed: the kernel backend still refuses a map without an fd, saying why.
      config: configFromObject({
        rundir: join(dir, 'run'),
        device: { name: 'edu' },
        policy: { dma_without_fd: 'relay' },
      }),
      device: dev,
      auditSink: (l) => audit.push(l),
      log: () => {},
    });
    assert.equal(broker.driver.name, 'edu');
    const socket = broker.sockets.get('dma');
    assert.ok(socket, 'the edu driver offers lease kind dma');
    const lease = await connect({ socket }).catch((err: Error & { cause?: { command?: string } }) => {
      if (err.cause?.command !== 'VFIO_USER_DEVICE_SET_IRQS') throw err;
      throw new Error(
        "the lease's vector could not be wired: edu has MSI only, and the broker must wire lease vectors at " +
          'LeaseResources.irqIndex (VFIO_PCI_MSI_IRQ_INDEX for edu) rather than always at MSI-X ' +
          '(src/broker/lease-irqs.ts wireLeaseIrqs, src/broker/lease-reclaim.ts reclaimLease)',
        { cause: err },
      );
    });
    try {
      const iso = lease.info.isolation;
      assert.equal(iso.bar0?.level, 'cooperative');
      assert.match(iso.bar0?.reason ?? '', /no mappable, revocable slice fd/);
      assert.equal(iso.iovaWindow?.level, 'enforced');
      assert.equal(iso.interrupts?.level, 'enforced');
      await assert.rejects(connect({ socket }), /EBUSY|one lease at a time|leased/);

      const id = await lease.client.regionRead(BAR0, 0, 4);
      assert.equal(new DataView(id.buffer, id.byteOffset).getUint32(0, true), 0x010000ed);

      const buf = await lease.dma.alloc(8192);
      const text = new TextEncoder().encode('through the broker');
      buf.u8.set(text, 0);
      const w64 = (off: number, v: bigint) => {
        const b = new Uint8Array(8);
        new DataView(b.buffer).setBigUint64(0, v, true);
        return lease.client.regionWrite(BAR0, off, b);
      };
      const irq = lease.nextInterrupt();
      for (const [src, dst, cmd] of [
        [buf.iova, EDU_DMA_BUFFER, EDU_DMA_CMD.START],
        [EDU_DMA_BUFFER, buf.iova + 4096n, EDU_DMA_CMD.START | EDU_DMA_CMD.TO_RAM | EDU_DMA_CMD.IRQ],
      ] as const) {
        await w64(EDU.DMA_SRC, src);
        await w64(EDU.DMA_DST, dst);
        await w64(EDU.DMA_COUNT, BigInt(text.byteLength));
        await w64(EDU.DMA_CMD, BigInt(cmd));
        await until('the DMA', async () => {
          const c = await lease.client.regionRead(BAR0, EDU.DMA_CMD, 4);
          return !(c[0]! & EDU_DMA_CMD.START);
        });
      }
      assert.deepEqual(buf.u8.slice(4096, 4096 + text.byteLength), text);
      assert.equal(await irq, 0, "the DMA's MSI arrives on the lease's vector 0");
      await buf.free();

      using outside = MemFd.create('outside', { size: 4096 });
      await assert.rejects(
        lease.client.dmaMap({
          fd: outside.fd,
          offset: 0n,
          iova: EDU_WINDOW.base + EDU_WINDOW.size,
          size: 4096n,
          flags: 3,
        }),
        /outside the lease's IOVA window/,
      );
      await assert.rejects(
        lease.client.dmaMap({ iova: EDU_WINDOW.base, size: 4096n, flags: 3, memory: new Uint8Array(4096) }),
        (err: Error & { code?: string }) =>
          err.code === 'EINVAL' && /without an fd: .*driven through the kernel's VFIO/.test(err.message),
      );
      assert.equal(broker.leases.relay.size, 0);
    } finally {
      lease.close();
    }
    await until('the lease to be reclaimed', () => broker!.leases.all().length === 0);
    assert.ok(audit.some((l) => l.includes('"released"')));
  } finally {
    await broker?.close();
    await dev.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('broker: a client SIGKILLed while holding a DMA mapping is reclaimed; the same DMA then faults and leaves its buffer untouched', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-edu-kill-'));
  const dev = await open();
  using mem = MemFd.create('client-buffer', { size: 4096 });
  using map = mem.map();
  const kmsg = openSync('/dev/kmsg', constants.O_RDONLY | constants.O_NONBLOCK);
  let broker: Broker | null = null;
  try {
    broker = await Broker.start({
      config: configFromObject({ rundir: join(dir, 'run'), device: { name: 'edu' } }),
      device: dev,
      log: () => {},
    });
    const socket = broker.sockets.get('dma')!;
    // The client inherits the buffer as fd 3 and maps it through the broker; the test keeps its own mapping.
    const client = spawn(process.execPath, [join(here, 'fixtures', 'edu-client.js'), socket], {
      stdio: ['ignore', 'pipe', 'inherit', mem.fd.fd],
    });
    const line = await new Promise<string>((resolve, reject) => {
      createInterface({ input: client.stdout! }).once('line', resolve);
      client.once('exit', (c) => reject(new Error(`edu client exited (${c}) before mapping`)));
    });
    const iova = BigInt(JSON.parse(line).iova);
    const lease = broker.leases.all()[0]!;
    assert.equal(lease.mappings.size, 1, 'the broker mapped the client buffer');

    // An edu DMA moves known data into the client's buffer through its mapping.
    const data = new TextEncoder().encode('devlease edu DMA into a client buffer');
    map.u8.set(data, 2048);
    await eduDma(dev, iova + 2048n, EDU_DMA_BUFFER, data.byteLength, false); // buffer -> edu
    map.u8.fill(0, 0, 2048);
    await eduDma(dev, EDU_DMA_BUFFER, iova, data.byteLength, true); // edu -> buffer
    assert.deepEqual(map.u8.slice(0, data.byteLength), data, 'the DMA reached the client buffer');

    client.kill('SIGKILL');
    await until('the broker to reclaim the killed client', () => broker!.leases.all().length === 0);
    map.u8.fill(0x5a, 0, 2048);
    drainKmsg(kmsg);
    await eduDma(dev, EDU_DMA_BUFFER, iova, data.byteLength, true);
    assert.ok(
      map.u8.subarray(0, 2048).every((b) => b === 0x5a),
      'the buffer is untouched after reclaim',
    );
    await dmarFault(kmsg, iova);
  } finally {
    closeSync(kmsg);
    await broker?.close();
    await dev.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
