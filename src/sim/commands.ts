// JSON commands from the front-end to the device worker (everything off the
// register hot path). Numbers that may exceed 2^53 are bigints (the mailbox
// JSON carries them); fds are process-wide numbers.

export type InjectRequest =
  | { kind: 'hang' }
  | { kind: 'fault'; queue: number; code?: number; iova?: bigint }
  | { kind: 'delay'; ms: number; queue?: number }
  | { kind: 'dropIrq'; count: number; index?: number; vector?: number };

export type DeviceRequest =
  | { op: 'dmaMap'; fd: number; offset: bigint; iova: bigint; size: bigint; read: boolean; write: boolean }
  | { op: 'dmaUnmap'; iova: bigint; size: bigint; all: boolean }
  | { op: 'irqFds'; index: number; start: number; fds: number[] }
  | { op: 'reset' }
  | { op: 'dmaBuf'; payload: string }
  | { op: 'revoke'; fd: number }
  | { op: 'disconnect' }
  | { op: 'inject'; inject: InjectRequest }
  | { op: 'ioFds' }
  | { op: 'stats' };

export interface DeviceStats {
  /** Rounds that did work / that found nothing. */
  busyRounds: number;
  idleRounds: number;
  /** Idle sleeps of one idle poll interval (Atomics.wait on the mailbox word). */
  sleeps: number;
  /** Sleeps until the next owner command, taken when no queue could act on a doorbell. */
  deepSleeps: number;
  /** Sleeps with KICK_NEEDED armed and nothing waiting: until kicked, or the armed poll interval. */
  armedSleeps: number;
  dmaMaps: number;
  firmwareRunning: boolean;
}

export const toBase64 = (b: Uint8Array): string =>
  Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');
export const fromBase64 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'base64'));
