// Case 5, revoke with deadline 0: the owner revokes a lease whose holder is
// spinning on reads of its guarded queue page mapping. Measured: revoke() →
// the client sees its mapping dead (isRevoked(), timed in the client on
// CLOCK_MONOTONIC, fixtures/clock.ts) and revoke() → the lease free in the broker. The floor is the
// device's own part: the same number of bare device round trips.
//
//   node dist/bench/cases/revoke.js [--quick]

import type { Lease as BrokerLease } from '../../src/broker/lease.js';
import { ClientProc } from '../fixtures/client-proc.js';
import { sharedMs } from '../fixtures/clock.js';
import { BrokerProbe } from '../fixtures/probe.js';
import { metric, progress, runCase } from '../fixtures/result.js';
import { startRig } from '../fixtures/rig.js';

const epochMs = sharedMs;

runCase(
  'revoke',
  'Revoke (deadline 0): until the client mapping is dead and the lease free',
  async (quick) => {
    const n = quick ? 10 : 50;
    const rig = await startRig({ simArgs: ['--queues', '8'] });
    const probe = new BrokerProbe(rig.broker);
    const released = new Map<string, number>();
    rig.broker.leases.on('released', (l: BrokerLease) => released.set(l.id, epochMs()));
    const client = await ClientProc.spawn();
    const toDead: number[] = [];
    const toFree: number[] = [];
    const floor: number[] = [];
    const quiesce: number[] = [];
    const sliceRevoke: number[] = [];
    const toStart: number[] = [];
    const commands = new Set<number>();
    const rounds = new Set<number>();
    const started = new Map<string, number>();
    rig.broker.leases.on('state', (l: BrokerLease) => {
      if (l.state === 'reclaiming') started.set(l.id, epochMs());
    });
    try {
      progress(`${n} revocations`);
      for (let i = 0; i < n + 2; i++) {
        const { lease } = await client.call<{ lease: string }>('lease', { socket: rig.socket });
        const spinning = client.nextEvent('spinning');
        const dead = client.call<{ atDead: number }>('spinUntilRevoked');
        await spinning;
        probe.take();
        const at0 = epochMs();
        rig.broker.leases.revoke(lease, 0, 'bench: revoke with deadline 0');
        const { atDead } = await dead;
        while (!released.has(lease)) await new Promise((r) => setImmediate(r));
        const p = probe.take();
        await client.call('releaseAll');
        if (i < 2) continue; // warm-up
        toDead.push(atDead - at0);
        toFree.push(released.get(lease)! - at0);
        toStart.push(started.get(lease)! - at0);
        quiesce.push(p.quiesceMs);
        sliceRevoke.push(p.calls['revokeSlice']?.ms ?? 0);
        commands.add(p.commands);
        rounds.add(p.rounds);
        floor.push(await probe.roundTrips(p.commands));
      }
      return {
        metrics: [
          metric('floor', 'same number of bare device round trips', 'ms', floor, { role: 'floor' }),
          metric('revoke-dead', 'revoke → client mapping dead', 'ms', toDead, { ref: 'floor' }),
          metric('revoke-free', 'revoke → lease free in broker', 'ms', toFree, { ref: 'floor' }),
          metric('revoke-start', '· revoke → reclaim starts (deadline timer)', 'ms', toStart),
          metric('revoke-quiesce', '· quiesce the queue', 'ms', quiesce),
          metric('revoke-slice', '· revoke the queue page slice at the device', 'ms', sliceRevoke),
        ],
        notes: {
          simulator: '--queues 8, default --idle-poll-us 50',
          deviceCommandsPerRevoke: [...commands],
          // Times the broker waited on the device with nothing else in flight: its sequential round trips.
          deviceRoundsPerRevoke: [...rounds],
        },
      };
    } finally {
      await client.exit();
      await rig.close();
    }
  },
);
