// The device: a worker thread that owns all SA-1 state and runs the queue
// engine. It polls the queue pages, spinning while there is work and
// sleeping on the mailbox word for the idle poll interval when a full round
// found none (so an owner command wakes it at once). Owner commands are
// served between descriptors.

import { parentPort, workerData } from 'node:worker_threads';
import { Mapping, native } from '../sys/index.js';
import { ERRNO, type ErrnoName, VfioError } from '../vfio/user/device-model.js';
import { type DeviceRequest, type DeviceStats, fromBase64, type InjectRequest } from './commands.js';
import { ARMED, RACED, Sa1Device } from './device.js';
import { checkMapRequest, type DmaMapping } from './iommu.js';
import { bigintReplacer, bigintReviver, Cmd, Mailbox } from './mailbox.js';
import { MemfdBacking } from './memfd-backing.js';
import { KICK_ARMED_POLL_US, type Sa1Options } from './options.js';
import { O_ACCMODE, O_RDONLY, parseDmaBufRequest } from './slices.js';

interface WorkerInit {
  options: Sa1Options;
  mailbox: SharedArrayBuffer;
}

const init = workerData as WorkerInit;
const options = init.options;
const mailbox = new Mailbox(init.mailbox);
const backing = new MemfdBacking(options);
/** eventfd numbers per VFIO irq index and vector (-1: none). The front-end owns the Fd objects. */
const irqFds: number[][] = [[], [], new Array(options.numQueues + 1).fill(-1), [-1], [-1]];
const device = new Sa1Device(options, backing, {
  interrupt(index, vector) {
    const fd = irqFds[index]?.[vector] ?? -1;
    if (fd < 0) return;
    try {
      native.eventfdWrite(fd, 1);
    } catch {
      // A full counter (EAGAIN) already says "interrupt pending"; nothing else can fail on an eventfd.
    }
  },
});
const revokedInodes = new Set<bigint>();
// Doorbell notification (datasheet §2.3 rev 2): one ioeventfd per queue page, handed out with
// GET_REGION_IO_FDS, plus the wake eventfd the mailbox writes while the device sleeps on them.
// waitList[0] is the wake fd; the device owns all of them for its lifetime.
const { EFD_NONBLOCK } = native.constants as Record<string, number>;
const kickFds: number[] = Array.from({ length: options.numQueues }, () => native.eventfd(0, EFD_NONBLOCK!));
const waitList: number[] = [native.eventfd(0, EFD_NONBLOCK!), ...kickFds];
/** Set once kick fds were handed out: from then on an armed idle device sleeps the long interval. */
let kicksHandedOut = false;
const stats: DeviceStats = {
  busyRounds: 0,
  idleRounds: 0,
  sleeps: 0,
  deepSleeps: 0,
  armedSleeps: 0,
  dmaMaps: 0,
  firmwareRunning: false,
};
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function asVfioError(err: unknown): VfioError | null {
  if (err instanceof VfioError) return err;
  const code = (err as { code?: unknown })?.code;
  if (typeof code === 'string' && code in ERRNO)
    return new VfioError(code as ErrnoName, (err as Error).message);
  return null;
}

function release(maps: DmaMapping[]): void {
  for (const m of maps) m.release();
}

function dmaMap(r: Extract<DeviceRequest, { op: 'dmaMap' }>): void {
  const { iova, size, offset } = checkMapRequest(r);
  device.iommu.checkFree(iova, size);
  const mapping = Mapping.map(r.fd, { length: size, offset, prot: r.write ? 'rw' : 'r', guard: true });
  device.dmaMap({
    iova,
    size,
    readable: r.read,
    writable: r.write,
    view: mapping.u8,
    release: () => mapping.unmap(),
  });
}

function inject(i: InjectRequest): void {
  switch (i.kind) {
    case 'hang':
      device.injectHang();
      return;
    case 'fault':
      device.injectFault(i.queue, i.code, i.iova);
      return;
    case 'delay':
      device.setDescriptorDelay(i.ms, i.queue);
      return;
    case 'dropIrq':
      device.dropInterrupts(i.count, i.index, i.vector);
      return;
  }
}

function handleJson(r: DeviceRequest): unknown {
  switch (r.op) {
    case 'dmaMap':
      return dmaMap(r);
    case 'dmaUnmap':
      return release(device.dmaUnmap(Number(r.iova), Number(r.size), r.all));
    case 'irqFds': {
      const slots = irqFds[r.index];
      if (!slots || r.start + r.fds.length > slots.length)
        throw new VfioError('EINVAL', `irq ${r.index} range`);
      r.fds.forEach((fd, i) => {
        slots[r.start + i] = fd;
      });
      return;
    }
    case 'reset':
      return device.reset();
    case 'dmaBuf': {
      const req = parseDmaBufRequest(options, fromBase64(r.payload));
      const fds: number[] = [];
      try {
        for (const s of req.slices)
          fds.push(backing.open(s, (req.accessMode & O_ACCMODE) === O_RDONLY).release());
      } catch (err) {
        for (const fd of fds) native.close(fd);
        throw err;
      }
      return { fds };
    }
    case 'revoke': {
      const { ino } = native.fstat(r.fd);
      const slice = backing.findByInode(ino);
      if (!slice) {
        if (revokedInodes.has(ino)) return; // already revoked: nothing left to take back
        throw new VfioError('ENOENT', 'the fd is not a slice of this device');
      }
      device.revokeSlice(slice);
      revokedInodes.add(ino);
      return;
    }
    case 'disconnect': {
      release(device.ownerDisconnected());
      for (const slots of irqFds) slots.fill(-1);
      return;
    }
    case 'inject':
      return inject(r.inject);
    case 'ioFds':
      // The front end dups them for the reply; the device keeps its own.
      kicksHandedOut = true;
      return { fds: kickFds };
    case 'stats':
      return { ...stats, dmaMaps: device.iommu.maps.length, firmwareRunning: device.firmware.running };
  }
}

/** Serve the pending command (not SHUTDOWN). */
function serve(): void {
  const { cmd, args, payload } = mailbox.request();
  try {
    if (cmd === Cmd.REGION_READ) {
      mailbox.reply(device.regionRead(args[0] as number, offsetOf(args), args[3] as number));
    } else if (cmd === Cmd.REGION_WRITE) {
      device.regionWrite(args[0] as number, offsetOf(args), payload);
      mailbox.reply(null);
    } else if (cmd === Cmd.JSON) {
      const result = handleJson(JSON.parse(decoder.decode(payload), bigintReviver) as DeviceRequest);
      mailbox.reply(result === undefined ? null : encoder.encode(JSON.stringify(result, bigintReplacer)));
    } else {
      mailbox.replyError(ERRNO.ENOSYS, 'ENOSYS', `unknown device command ${cmd}`);
    }
  } catch (err) {
    const v = asVfioError(err);
    if (v) mailbox.replyError(v.errno, v.code, v.message);
    else mailbox.replyError(0, 'EIO', `device error: ${(err as Error)?.stack ?? String(err)}`);
  }
}

function offsetOf(args: number[]): number {
  return ((args[1] as number) >>> 0) + ((args[2] as number) >>> 0) * 2 ** 32;
}

function serveBetweenDescriptors(): void {
  if (mailbox.pending && mailbox.pendingCmd !== Cmd.SHUTDOWN) serve();
}

function run(): void {
  const idleMs = options.idlePollUs / 1000;
  for (;;) {
    if (mailbox.pending) {
      if (mailbox.pendingCmd === Cmd.SHUTDOWN) break;
      serve();
      continue;
    }
    if (device.step(serveBetweenDescriptors)) {
      stats.busyRounds++;
      continue;
    }
    stats.idleRounds++;
    const due = device.nextDueInMs();
    if (due === null && !device.pollingNeeded()) {
      // No queue can take a doorbell: sleep until an owner command (which may enable one) arrives.
      stats.deepSleeps++;
      mailbox.sleep(Number.POSITIVE_INFINITY);
      continue;
    }
    if (idleMs === 0) continue;
    // About to sleep: set KICK_NEEDED, then look at every SQ_TAIL once more (§2.3).
    const arm = device.armKicks();
    if (arm === RACED) {
      device.disarmKicks();
      continue;
    }
    stats.sleeps++;
    // Nobody can kick (no fd handed out) or a full CQ waits for CQ_HEAD: the idle poll interval.
    // Otherwise sleep until kicked, still polling at the armed interval for clients that never kick.
    const pollMs = kicksHandedOut && arm === ARMED ? Math.max(idleMs, KICK_ARMED_POLL_US / 1000) : idleMs;
    const ms = due === null ? pollMs : Math.min(pollMs, due);
    if (kicksHandedOut) {
      if (arm === ARMED) stats.armedSleeps++;
      mailbox.sleepOnFds(waitList, ms);
    } else {
      mailbox.sleep(ms);
    }
    device.disarmKicks();
  }
  // Shutdown: drop every mapping and slice, then answer.
  release(device.iommu.remove(0, 0, true));
  backing.close();
  for (const fd of waitList) native.close(fd);
  mailbox.reply(null);
}

parentPort?.postMessage({ ready: true });
run();
