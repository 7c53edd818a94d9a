// The device requests (commands.ts) as they sit in a mailbox slot
// (mailbox.ts): an op number and a few numeric fields, bigints as u64
// slots, small register data as inline bytes. What has no slot encoding
// (a DMA map's shared buffer, injections, stats, writes longer than a
// slot's bytes) goes on the port instead, in the same order.

import type { DeviceRequest } from './commands.js';
import { SLOT_BYTES, type SlotCodec, type SlotViews } from './mailbox-ring.js';

const REGION_READ = 1;
const REGION_WRITE = 2;
const UNMAP_POSTED = 3;
const KICKS_HANDED_OUT = 4;
const QUEUE_ENABLED = 5;
const RESET = 6;
const REVOKE = 7;
const PAGE_RENEWED = 8;
const DISCONNECT = 9;
const SHUTDOWN = 10;
const REMOTE_MAP_POSTED = 11;
const DOORBELL = 12;

/** The slot's numeric fields, as f64 (and u64 over the same words) indexes within a slot. */
const F0 = 0;
const F1 = 1;
const F2 = 2;

export const deviceRequestSlots: SlotCodec<DeviceRequest> = {
  encode(r: DeviceRequest, s: SlotViews, at: number): number {
    const f = s.f64;
    switch (r.op) {
      case 'regionRead':
        f[at + F0] = r.index;
        f[at + F1] = r.offset;
        f[at + F2] = r.count;
        return REGION_READ;
      case 'regionWrite':
        if (r.data.length > SLOT_BYTES) return 0;
        f[at + F0] = r.index;
        f[at + F1] = r.offset;
        f[at + F2] = r.data.length;
        s.bytes(at).set(r.data);
        return REGION_WRITE;
      case 'unmapPosted':
        s.u64[at + F0] = BigInt.asUintN(64, r.iova);
        s.u64[at + F1] = BigInt.asUintN(64, r.size);
        f[at + F2] = r.all ? 1 : 0;
        return UNMAP_POSTED;
      case 'remoteMapPosted':
        f[at + F0] = r.iova;
        f[at + F1] = r.size;
        f[at + F2] = (r.read ? 1 : 0) | (r.write ? 2 : 0);
        return REMOTE_MAP_POSTED;
      case 'doorbell':
        return DOORBELL;
      case 'kicksHandedOut':
        return KICKS_HANDED_OUT;
      case 'queueEnabled':
        f[at + F0] = r.queue;
        return QUEUE_ENABLED;
      case 'reset':
        return RESET;
      case 'revoke':
        f[at + F0] = r.fd;
        f[at + F1] = r.fault ? 1 : 0;
        return REVOKE;
      case 'pageRenewed':
        f[at + F0] = r.queue;
        return PAGE_RENEWED;
      case 'disconnect':
        return DISCONNECT;
      case 'shutdown':
        return SHUTDOWN;
      default:
        return 0; // mapPosted (a shared buffer), inject, stats: the port
    }
  },

  decode(op: number, s: SlotViews, at: number): DeviceRequest {
    const f = s.f64;
    switch (op) {
      case REGION_READ:
        return { op: 'regionRead', index: f[at + F0]!, offset: f[at + F1]!, count: f[at + F2]! };
      case REGION_WRITE:
        // A copy: the slot is reused once taken.
        return {
          op: 'regionWrite',
          index: f[at + F0]!,
          offset: f[at + F1]!,
          data: s.bytes(at).slice(0, f[at + F2]!),
        };
      case UNMAP_POSTED:
        return { op: 'unmapPosted', iova: s.u64[at + F0]!, size: s.u64[at + F1]!, all: f[at + F2] === 1 };
      case REMOTE_MAP_POSTED: {
        const access = f[at + F2]!;
        return {
          op: 'remoteMapPosted',
          iova: f[at + F0]!,
          size: f[at + F1]!,
          read: (access & 1) !== 0,
          write: (access & 2) !== 0,
        };
      }
      case DOORBELL:
        return { op: 'doorbell' };
      case KICKS_HANDED_OUT:
        return { op: 'kicksHandedOut' };
      case QUEUE_ENABLED:
        return { op: 'queueEnabled', queue: f[at + F0]! };
      case RESET:
        return { op: 'reset' };
      case REVOKE:
        return { op: 'revoke', fd: f[at + F0]!, fault: f[at + F1] === 1 };
      case PAGE_RENEWED:
        return { op: 'pageRenewed', queue: f[at + F0]! };
      case DISCONNECT:
        return { op: 'disconnect' };
      case SHUTDOWN:
        return { op: 'shutdown' };
      default:
        throw new Error(`mailbox slot holds unknown op ${op}`);
    }
  },
};
