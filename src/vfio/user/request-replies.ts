// The replies of the requests whose answer is the device model's plus framing: region info, region I/O
// fds and device features. Each checks the request against the model and the peer's fd limit, and closes
// every fd the model handed over that does not go out with the reply.
import { VfioError } from '../../errors.js';
import type { Fd } from '../../sys/fd.js';
import { VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_PROBE } from '../uapi/vfio.js';
import type { Issued, VfioUserDeviceModel } from './device-model.js';
import { encodeFeature } from './messages.js';
import { regionInfoReply } from './region-info.js';
import { encodeRegionIoFdsReply, parseRegionIoFdsRequest } from './region-io-fds.js';
import * as V from './validate.js';

/**
 * A request's reply: its payload, or `framed` — the whole reply message with its payload in place after
 * HEADER_SIZE bytes left for the header (filled in when sent: no copy of the payload) — and fds to send.
 * `sent`: called once the connection has taken the reply and its fds to send (never for a request that asked
 * for no reply, nor when the reply cannot be built).
 */
export type Reply = { payload?: Uint8Array; framed?: Buffer; fds?: Fd[]; sent?: () => void };

export function regionInfo(payload: Uint8Array, model: VfioUserDeviceModel, log: (m: string) => void): Reply {
  const { argsz, index } = V.parseInfoArgsz('GET_REGION_INFO', payload);
  const { num_regions } = model.deviceInfo();
  if (index >= num_regions) throw new VfioError('EINVAL', `region ${index} does not exist (${num_regions})`);
  // The fd the model handed over is sent, then closed like every fd a model returns.
  return regionInfoReply(argsz, index, model.regionInfo(index, { argsz }), log);
}

export async function regionIoFds(
  payload: Uint8Array,
  model: VfioUserDeviceModel,
  peerMaxFds: number,
  issued?: Issued,
): Promise<Reply> {
  // A device that offers none refuses the command whatever it carries (as before rev 2).
  if (!model.regionIoFds) throw new VfioError('ENOTSUP', 'region I/O fds are not offered by this device');
  const { argsz, index } = parseRegionIoFdsRequest(payload);
  const { num_regions } = model.deviceInfo();
  if (index >= num_regions) throw new VfioError('EINVAL', `region ${index} does not exist (${num_regions})`);
  const answer = await model.regionIoFds(index, { issued, maxFds: peerMaxFds });
  try {
    const reply = encodeRegionIoFdsReply(index, argsz, answer, peerMaxFds);
    // fds not sent (the head-only reply) are closed here; sent ones after sending, like every reply's.
    if (reply.fds.length === 0) closeAll(answer.fds);
    else if (answer.sent) return { ...reply, sent: answer.sent };
    return reply;
  } catch (err) {
    closeAll(answer.fds);
    throw err;
  }
}

export async function feature(
  payload: Uint8Array,
  model: VfioUserDeviceModel,
  peerMaxFds: number,
  take: () => Fd[],
): Promise<Reply> {
  const f = V.parseFeature(payload);
  const res = await model.feature({
    flags: f.flags,
    feature: f.feature,
    data: f.data.slice(),
    fds: take(),
  });
  const fds = res.fds ?? [];
  // GET returns the feature's data; SET and PROBE echo the request's (vfio-user.rst, DEVICE_FEATURE "Reply").
  const isGet = (f.flags & VFIO_DEVICE_FEATURE_GET) !== 0 && (f.flags & VFIO_DEVICE_FEATURE_PROBE) === 0;
  const data = res.data ?? (isGet ? new Uint8Array(0) : f.data);
  const size = 8 + data.byteLength;
  if (size > f.argsz || fds.length > peerMaxFds) {
    closeAll(fds);
    throw new VfioError(
      'ENOSPC',
      `feature ${f.feature} reply (${size} bytes, ${fds.length} fds) exceeds argsz ${f.argsz} or max_msg_fds ${peerMaxFds}`,
    );
  }
  return { payload: encodeFeature(size, f.flags, data), fds };
}

export function closeAll(fds: readonly Fd[]): void {
  for (const fd of fds) {
    try {
      fd.close();
    } catch {
      // already closed by its new owner
    }
  }
}
