// One demo client process: lease a queue, then copy and CRC random data
// through the device, verifying every byte against the CPU, reporting stats
// to the demo as JSON lines on stdout. Handles the revocation notice by
// finishing its current work and letting go before the deadline.

import { randomFillSync } from 'node:crypto';
import { connect } from '../client/lease.js';
import { Sa1Queue } from '../client/sa1-queue.js';
import { crc32c } from '../hw/sa1/crc32c.js';
import { exitWithParent } from '../util/exit-with-parent.js';

const say = (msg: Record<string, unknown>) =>
  process.stdout.write(`${JSON.stringify(msg, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))}\n`);

const SIZES = [4096, 16384, 65536];
const BUF = 65536;

async function main(): Promise<void> {
  const socket = process.argv[2];
  if (!socket) throw new Error('usage: client-worker <queue.sock>');
  const lease = await connect({ socket, deferSetup: true }); // Sa1Queue.create shares the setup's round trip
  // Listen before anything else is awaited: the owner may ask for the lease back as soon as it is granted,
  // and a notice emitted before a listener exists is lost (the loop would then run into the deadline).
  let stop: string | null = null;
  const onNotice = (deadline: number) => {
    say({ type: 'revoke-requested', deadline, msLeft: deadline - Date.now() });
    stop = 'revoked (released voluntarily before the deadline)';
  };
  lease.on('revoke-requested', ({ deadline }: { deadline: number }) => onNotice(deadline));
  lease.on('disconnected', (why: string) => {
    stop ??= `disconnected: ${why}`;
  });
  if (lease.info.state === 'revoking') onNotice(lease.info.deadline ?? Date.now());
  say({
    type: 'leased',
    lease: lease.info.lease,
    queue: lease.info.queue,
    pid: process.pid,
    isolation: lease.info.isolation,
  });
  const q = await Sa1Queue.create(lease, { entries: 64 });
  const src = await lease.dma.alloc(BUF);
  const dst = await lease.dma.alloc(BUF);

  process.on('SIGTERM', () => {
    stop ??= 'stopped by the demo';
  });

  let ops = 0;
  let bytes = 0;
  let verifiedBytes = 0;
  let mismatches = 0;
  const lat: number[] = [];
  let lastReport = Date.now();
  const report = (type: string, extra: Record<string, unknown> = {}) => {
    const sorted = [...lat].sort((a, b) => a - b);
    const pct = (p: number) =>
      sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] : 0;
    say({ type, ops, bytes, verifiedBytes, mismatches, p50us: pct(0.5), p99us: pct(0.99), ...extra });
  };

  while (!stop) {
    const size = SIZES[ops % SIZES.length]!;
    randomFillSync(src.u8, 0, size);
    dst.u8.fill(0, 0, size);
    const t0 = process.hrtime.bigint();
    try {
      const [, crc] = await Promise.all([q.copy(src.iova, dst.iova, size), q.crc32c(src.iova, size)]);
      lat.push(Number(process.hrtime.bigint() - t0) / 1000);
      if (lat.length > 2000) lat.splice(0, 1000);
      const want = crc32c(src.u8.subarray(0, size));
      const same =
        Buffer.compare(Buffer.from(src.u8.buffer, 0, size), Buffer.from(dst.u8.buffer, 0, size)) === 0;
      if (!same || crc!.result !== want) mismatches++;
      else verifiedBytes += size;
      ops += 2;
      bytes += 2 * size;
    } catch (err) {
      if (stop || lease.closed) break;
      // The deadline passed before the notice was handled: the slices are dead, whatever the queue said.
      if (lease.revoked) {
        stop = 'revoked by the owner (the deadline passed)';
        break;
      }
      throw err;
    }
    if (Date.now() - lastReport >= 250) {
      lastReport = Date.now();
      report('stats');
    }
  }
  report('released', { reason: stop });
  lease.close();
}

exitWithParent(); // the demo SIGKILLed: SIGTERM, and this client lets go of its lease
main().then(
  () => process.exit(0),
  (err: Error & { code?: string }) => {
    say({ type: 'error', code: err.code, message: err.message });
    process.exit(1);
  },
);
