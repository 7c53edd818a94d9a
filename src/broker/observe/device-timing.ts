// Device command latency as the broker sees it: the time from issuing a command (a register read, a DMA
// map, an interrupt wiring...) to its answer. The Device's methods are wrapped on the instance, so every
// caller (driver, lease table, recovery) is measured without knowing it; undo() restores them.
import type { Device } from '../../device/device.js';

/** Device method → the command label it is counted under. */
const COMMANDS: Record<string, string> = {
  region: 'region_info',
  read: 'region_read',
  read32: 'region_read',
  read64: 'region_read',
  write: 'region_write',
  write32: 'region_write',
  write64: 'region_write',
  dmaMap: 'dma_map',
  dmaUnmap: 'dma_unmap',
  setIrqs: 'set_irqs',
  disableIrqs: 'set_irqs',
  unmaskIrq: 'set_irqs',
  reset: 'reset',
  sliceFds: 'slice_fds',
  revokeSlice: 'revoke_slice',
};

export type CommandObserver = (command: string, seconds: number, failed: boolean) => void;

/** Times every command of `device`; returns undo(). */
export function timeDeviceCommands(device: Device, observe: CommandObserver): () => void {
  const target = device as unknown as Record<string, unknown>;
  // A method that calls another one synchronously (a kernel device's read32 calls read) is counted once.
  let inside = false;
  const wrapped: { method: string; own: boolean; orig: unknown }[] = [];
  for (const [method, command] of Object.entries(COMMANDS)) {
    const orig = target[method];
    if (typeof orig !== 'function') continue;
    wrapped.push({ method, own: Object.hasOwn(target, method), orig });
    target[method] = (...args: unknown[]) => {
      if (inside) return orig.apply(device, args);
      const t0 = process.hrtime.bigint();
      inside = true;
      let p: Promise<unknown>;
      try {
        p = Promise.resolve(orig.apply(device, args));
      } catch (err) {
        observe(command, Number(process.hrtime.bigint() - t0) / 1e9, true);
        throw err;
      } finally {
        inside = false;
      }
      const done = (failed: boolean) => observe(command, Number(process.hrtime.bigint() - t0) / 1e9, failed);
      p.then(
        () => done(false),
        () => done(true),
      );
      return p;
    };
  }
  return () => {
    for (const w of wrapped) {
      if (w.own) target[w.method] = w.orig;
      else delete target[w.method];
    }
  };
}
