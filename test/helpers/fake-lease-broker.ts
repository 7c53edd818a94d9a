// A fake lease broker for the clients (Lease.connect; libdevlease through test/clib/fake-broker.ts): a real
// AF_UNIX stream socket in this process that answers a lease's setup well-formed — VERSION (the info in it, or
// only in the info region), REGION_INFO (the info region; slices as memfds), REGION_READ of the info,
// GET_REGION_IO_FDS (the queue page's kick fd), anything else an empty reply — unless a test's `fault` answers a
// request itself. Each test states only the one thing its broker does wrong.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Fd, MemFd, native, StreamServer, type StreamSocket } from '../../src/sys/index.js';
import { VFIO_PCI_ERR_IRQ_INDEX, vfio_region_info } from '../../src/vfio/uapi/vfio.js';
import {
  decodeMessage,
  encodeErrorReply,
  encodeReply,
  u32,
  type VfioUserMessage,
} from '../../src/vfio/user/codec.js';
import { VFIO_USER_FRAMING } from '../../src/vfio/user/index.js';
import { encodeVersion } from '../../src/vfio/user/messages.js';
import * as P from '../../src/vfio/user/protocol.js';
import { encodeRegionIoFdsReply, VFIO_USER_IO_FD_TYPE_IOEVENTFD } from '../../src/vfio/user/region-io-fds.js';

export const INFO_REGION = 9;
/** SQ_TAIL's offset in an SA-1 queue page: where a kick fd is asked for. */
const SQ_TAIL = 0x0c;

export const LEASE_INFO = {
  kind: 'queue',
  lease: 'queue-9',
  state: 'active',
  deadline: null,
  queue: 0,
  iovaWindow: { base: '0x100000000', size: '0x40000000' },
  iovaView: { mode: 'translated', reason: 'test' },
  devmem: null,
  vectors: 1,
  regions: [{ index: 2, size: '0x1000', unit: '0x1000' }],
  isolation: { queuePage: { level: 'enforced', reason: 'test' } },
  faults: [],
  faultsTotal: 0,
};

/** One message a client sent: its bytes (header included) and the fds that came with it. */
export interface ReceivedMessage {
  data: Buffer;
  fds: Fd[];
}

export interface FakeBrokerOptions {
  /** The info (default LEASE_INFO); a function: the info as it is when asked for (it may change). */
  info?: Record<string, unknown> | (() => Record<string, unknown>);
  /** Send the info with VERSION (default); false: only in the info region, which the client then reads. */
  infoInVersion?: boolean;
  /** Members added to the VERSION reply's "devlease" object (e.g. noticeIrq). */
  devlease?: Record<string, unknown>;
  /** The VERSION reply's max_data_xfer_size (default 65536). */
  maxDataXferSize?: number;
  /** REGION_INFO's size for the info region (default 16384, as the broker's). */
  infoSize?: bigint;
  /** A slice region's size, and its memfd's (default 4096). */
  sliceSize?: number;
  /** GET_REGION_IO_FDS of region 2: the fd to hand out as the kick at SQ_TAIL (default: ENOTSUP). */
  kickFd?: () => Fd;
  /**
   * Answers a request itself (true) instead of the well-formed answer. The message's fds are closed after it
   * (dup one to keep it). `answer()` sends the well-formed answer (for a fault that only delays it).
   */
  fault?: (
    sock: StreamSocket,
    msg: VfioUserMessage,
    received: ReceivedMessage,
    answer: () => void,
  ) => boolean;
  /** Called for each reply the client sends (to a command of ours). */
  onReply?: (sock: StreamSocket) => void;
}

export interface FakeBroker {
  socket: string;
  /** Requests received, by command number, in order. */
  commands: number[];
  close(): void;
}

export function fakeLeaseBroker(opts: FakeBrokerOptions = {}): FakeBroker {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-fake-lease-broker-'));
  const socket = join(dir, 'fake.sock');
  const server = StreamServer.listen(socket, { socket: { framing: VFIO_USER_FRAMING } });
  const commands: number[] = [];
  const open = new Set<StreamSocket>();
  server.on('connection', (sock: StreamSocket) => {
    open.add(sock);
    sock.on('close', () => open.delete(sock));
    serveFakeLease(sock, opts, commands);
  });
  return {
    socket,
    commands,
    close() {
      for (const s of open) s.close();
      server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The fake broker's side of one connection; each request's command number is pushed to `commands`. */
export function serveFakeLease(
  sock: StreamSocket,
  opts: FakeBrokerOptions = {},
  commands: number[] = [],
): void {
  const infoNow = () => (typeof opts.info === 'function' ? opts.info() : (opts.info ?? LEASE_INFO));
  sock.on('error', () => undefined);
  sock.on('message', (m: ReceivedMessage) => {
    const msg = decodeMessage(m.data);
    try {
      if ((msg.flags & P.VFIO_USER_F_TYPE_MASK) === P.VFIO_USER_F_TYPE_REPLY) {
        opts.onReply?.(sock); // the client's answer to a command of ours
        return;
      }
      commands.push(msg.command);
      if (!opts.fault?.(sock, msg, m, () => answer(msg))) answer(msg);
    } catch {
      // the client hung up first (it refused what we sent): nothing to answer
    } finally {
      for (const fd of m.fds) fd.close();
    }
  });

  function answer(msg: VfioUserMessage): void {
    const { msgId: id, command: cmd, payload } = msg;
    const b = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
    if (cmd === P.VFIO_USER_VERSION) {
      const devlease = {
        error_reason: true,
        infoRegion: INFO_REGION,
        ...(opts.infoInVersion === false ? {} : { info: infoNow() }),
        ...opts.devlease,
      };
      const caps = {
        max_msg_fds: 16,
        max_data_xfer_size: opts.maxDataXferSize ?? 65536,
        pgsizes: 4096,
        devlease,
      };
      sock.send(encodeReply(id, cmd, encodeVersion(0, 0, { capabilities: caps })));
    } else if (cmd === P.VFIO_USER_DEVICE_GET_REGION_INFO) {
      const index = b.readUInt32LE(8);
      const isInfo = index === INFO_REGION;
      const size = isInfo ? (opts.infoSize ?? 16384n) : BigInt(opts.sliceSize ?? 4096);
      const reply = vfio_region_info.encode({ argsz: 32, flags: isInfo ? 1 : 7, index, size, offset: 0n });
      if (isInfo) sock.send(encodeReply(id, cmd, reply));
      else {
        using mem = MemFd.create('fake-slice', { size: opts.sliceSize ?? 4096 });
        sock.send(encodeReply(id, cmd, reply), [mem.fd]);
      }
    } else if (cmd === P.VFIO_USER_REGION_READ) {
      const infoBytes = Buffer.alloc(16384);
      infoBytes.write(JSON.stringify(infoNow()));
      const offset = Number(b.readBigUInt64LE(0));
      const count = b.readUInt32LE(12);
      if (offset + count > infoBytes.length) {
        sock.send(encodeErrorReply(id, cmd, 22, 'read past the info we hold')); // EINVAL
        return;
      }
      const data = Buffer.alloc(count);
      infoBytes.copy(data, 0, offset, offset + count);
      sock.send(encodeReply(id, cmd, Buffer.concat([b.subarray(0, 16), data])));
    } else if (cmd === P.VFIO_USER_DEVICE_GET_REGION_IO_FDS && opts.kickFd) {
      const fd = opts.kickFd();
      try {
        const sub = { offset: BigInt(SQ_TAIL), size: 4n, fdIndex: 0, flags: 0, datamatch: 0n };
        const answer = { subRegions: [{ ...sub, type: VFIO_USER_IO_FD_TYPE_IOEVENTFD }], fds: [fd] };
        const r = encodeRegionIoFdsReply(b.readUInt32LE(8), b.readUInt32LE(0), answer, 16);
        sock.send(encodeReply(id, cmd, r.payload), r.fds);
      } finally {
        fd.close();
      }
    } else if (cmd === P.VFIO_USER_DEVICE_GET_REGION_IO_FDS) {
      sock.send(encodeErrorReply(id, cmd, 95, 'no io fds here')); // ENOTSUP
    } else {
      sock.send(encodeReply(id, cmd));
    }
  }
}

/** The ERR eventfd a client's SET_IRQS wires (vfio_irq_set's index at 8), as a dup the caller closes; else null. */
export function errEventfdOf(msg: VfioUserMessage, received: ReceivedMessage): Fd | null {
  if (msg.command !== P.VFIO_USER_DEVICE_SET_IRQS || u32(msg.payload, 8) !== VFIO_PCI_ERR_IRQ_INDEX)
    return null;
  return received.fds[0]?.dup() ?? null;
}

/**
 * A broker that lists faults without counting them (its info has no faultsTotal: one from before the count).
 * list(n) makes the info list n WINDOW_VIOLATIONs, at 0x1000, 0x2000, …, and signals the lease's ERR eventfd as
 * the broker does for a fault; the same n again makes that signal a reset.
 */
export function uncountingBroker(opts: FakeBrokerOptions = {}): FakeBroker & { list(n: number): void } {
  const { faultsTotal: _uncounted, ...info } = LEASE_INFO;
  let faults: { queue: number; code: number; name: string; address: string }[] = [];
  let err: Fd | null = null;
  const broker = fakeLeaseBroker({
    ...opts,
    info: () => ({ ...info, faults }),
    fault: (sock, msg, received, answer) => {
      // Keep the ERR eventfd; the well-formed answer is sent still.
      const wired = errEventfdOf(msg, received);
      if (wired) {
        err?.close();
        err = wired;
      }
      return opts.fault?.(sock, msg, received, answer) ?? false;
    },
  });
  return {
    ...broker,
    list(n) {
      if (!err) throw new Error('the lease has no ERR eventfd yet');
      faults = Array.from({ length: n }, (_, i) => ({
        queue: 0,
        code: 3,
        name: 'WINDOW_VIOLATION',
        address: `0x${((i + 1) * 0x1000).toString(16)}`,
      }));
      native.eventfdWrite(err.fd, 1n);
    },
    close() {
      err?.close();
      broker.close();
    },
  };
}
