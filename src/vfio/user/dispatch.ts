// One request of a negotiated vfio-user session, from command to reply: its checks (validate.ts), the device
// model's call and the reply's payload (the longer replies are request-replies.ts). It stands apart from
// connection.ts, which decides when a request runs and where its reply and fds go: this is what it does.
import { VfioError } from '../../errors.js';
import type { Fd } from '../../sys/fd.js';
import { VFIO_DEVICE_FLAGS_RESET, vfio_irq_info } from '../uapi/vfio.js';
import type { VfioUserMessage } from './codec.js';
import type { DmaMapRequest, IrqSetRequest, Issued, VfioUserDeviceModel } from './device-model.js';
import { vfio_user_device_info, vfio_user_region_access } from './messages.js';
import * as P from './protocol.js';
import { HEADER_SIZE } from './protocol.js';
import { feature, type Reply, regionInfo, regionIoFds } from './request-replies.js';
import * as V from './validate.js';
import type { Capabilities } from './version.js';

/** Commands this server knows but refuses (ENOTSUP), with the reason given in the log. */
const REFUSED: Record<number, string> = {
  [P.VFIO_USER_DIRTY_PAGES]: 'dirty page tracking is not supported',
  [P.VFIO_USER_REGION_WRITE_MULTI]: 'write_multiple was not negotiated',
  [P.VFIO_USER_MIG_DATA_READ]: 'migration is not supported',
  [P.VFIO_USER_MIG_DATA_WRITE]: 'migration is not supported',
  [P.VFIO_USER_DMA_READ]: 'DMA_READ is a server-to-client command',
  [P.VFIO_USER_DMA_WRITE]: 'DMA_WRITE is a server-to-client command',
};

/** `f(v)` now if `v` is a value, once it resolves if it is a promise: a model answers either way. */
function then<T>(v: T | PromiseLike<T>, f: (v: T) => Reply): Reply | Promise<Reply> {
  return isThenable(v) ? Promise.resolve(v).then(f) : f(v);
}

function isThenable<T>(v: T | PromiseLike<T>): v is PromiseLike<T> {
  return typeof (v as { then?: unknown } | null | undefined)?.then === 'function';
}

const noPayload = (): Reply => ({});

/** vfio_user_region_access: the head of REGION_READ/WRITE requests and replies, before any data. */
const ACCESS_HEAD = vfio_user_region_access.size;

/**
 * REGION_READ's reply: the request's access head (offset, region, count: the same values) then the data, built
 * in the reply message itself (`framed`, the header filled in when sent): one buffer, one copy of the data.
 */
/** A REGION_READ/WRITE reply built in one buffer: room for the header, the request's access head, `count` bytes. */
function framedAccess(head: Uint8Array, count: number): Buffer {
  const framed = Buffer.allocUnsafe(HEADER_SIZE + ACCESS_HEAD + count);
  for (let i = 0; i < ACCESS_HEAD; i++) framed[HEADER_SIZE + i] = head[i] as number;
  return framed;
}

function regionReadReply(head: Uint8Array, count: number, data: Uint8Array): Reply {
  if (data.byteLength !== count) {
    throw new Error(`model regionRead returned ${data.byteLength} bytes for ${count}`);
  }
  const framed = framedAccess(head, count);
  framed.set(data, HEADER_SIZE + ACCESS_HEAD);
  return { framed };
}

/**
 * Serve `msg` on connection `id` after VERSION (`peer`: the client's capabilities). `take` hands the
 * request's fds to the model (the caller closes them unless taken); `issued`, for a pipelined request, is
 * given to the model's call. The reply comes back synchronously when the model answered so (the connection
 * then sends it at once), else as a promise; a refusal is thrown or rejected alike.
 */
export function dispatchRequest(
  model: VfioUserDeviceModel,
  cfg: V.ServerLimits & { log(message: string): void },
  id: number,
  peer: Capabilities,
  msg: VfioUserMessage,
  fds: Fd[],
  take: () => Fd[],
  issued: Issued | undefined,
): Reply | Promise<Reply> {
  const { command, payload } = msg;
  V.checkFdCount(command, fds, cfg);
  switch (command) {
    case P.VFIO_USER_VERSION:
      throw new VfioError('EINVAL', 'version already negotiated');
    case P.VFIO_USER_DMA_MAP: {
      const m = V.parseDmaMap(payload, cfg);
      const [fd] = take();
      // Written out field by field, always the same fields: a spread with an optional member gave every
      // request its own object shape, and each read of it in the model took V8's slow lookup (issue 16).
      const req: DmaMapRequest = {
        fd: fd ?? null,
        offset: m.offset,
        iova: m.iova,
        size: m.size,
        flags: m.flags,
        issued,
      };
      return then(model.dmaMap(req), noPayload);
    }
    case P.VFIO_USER_DMA_UNMAP: {
      const { argsz: _argsz, ...u } = V.parseDmaUnmap(payload, cfg);
      // "The server responds with the original DMA entry in the request."
      return then(model.dmaUnmap(u), () => ({ payload: payload.slice() }));
    }
    case P.VFIO_USER_DEVICE_GET_INFO: {
      V.parseInfoArgsz('GET_INFO', payload);
      // request: a client's own GET_INFO, not a validation of another request's bounds.
      const d = model.deviceInfo({ request: true });
      return { payload: vfio_user_device_info.encode({ argsz: vfio_user_device_info.size, ...d }) };
    }
    case P.VFIO_USER_DEVICE_GET_REGION_INFO:
      return regionInfo(payload, model, (m) => cfg.log(`vfio-user connection ${id}: ${m}`));
    case P.VFIO_USER_DEVICE_GET_IRQ_INFO: {
      const { index } = V.parseInfoArgsz('GET_IRQ_INFO', payload);
      const { num_irqs } = model.deviceInfo();
      if (index >= num_irqs) throw new VfioError('EINVAL', `irq index ${index} does not exist (${num_irqs})`);
      const i = model.irqInfo(index);
      return { payload: vfio_irq_info.encode({ argsz: vfio_irq_info.size, ...i, index }) };
    }
    case P.VFIO_USER_DEVICE_SET_IRQS: {
      const s = V.parseIrqSet(payload, fds, model);
      const given = take();
      const list = given.length > 0 ? given : Array.from({ length: s.count }, () => null);
      // One object shape for every request (see DMA_MAP).
      const req: IrqSetRequest = {
        flags: s.flags,
        index: s.index,
        start: s.start,
        count: s.count,
        fds: list,
        bools: s.bools?.slice(),
        issued,
      };
      const set = model.setIrqs(req);
      return then(set, noPayload);
    }
    case P.VFIO_USER_REGION_READ: {
      const { region, offset, count } = V.parseRegionAccess(false, payload, model, cfg);
      const data = model.regionRead(region, offset, count);
      if (isThenable(data)) return Promise.resolve(data).then((d) => regionReadReply(payload, count, d));
      return regionReadReply(payload, count, data);
    }
    case P.VFIO_USER_REGION_WRITE: {
      const { region, offset } = V.parseRegionAccess(true, payload, model, cfg);
      const reply: Reply = { framed: framedAccess(payload, 0) }; // the request's access head alone
      return then(model.regionWrite(region, offset, payload.slice(ACCESS_HEAD)), () => reply);
    }
    case P.VFIO_USER_DEVICE_RESET: {
      if (payload.byteLength !== 0) throw new VfioError('EINVAL', 'VFIO_USER_DEVICE_RESET carries a payload');
      if (!(model.deviceInfo().flags & VFIO_DEVICE_FLAGS_RESET)) {
        throw new VfioError('ENOTSUP', 'device does not support reset');
      }
      return then(model.reset(), noPayload);
    }
    case P.VFIO_USER_DEVICE_FEATURE:
      return feature(payload, model, peer.maxMsgFds, take);
    case P.VFIO_USER_DEVICE_GET_REGION_IO_FDS:
      return regionIoFds(payload, model, peer.maxMsgFds, issued);
    default:
      if (REFUSED[command] !== undefined) throw new VfioError('ENOTSUP', REFUSED[command]);
      throw new VfioError('ENOSYS', `unknown command ${command}`);
  }
}
