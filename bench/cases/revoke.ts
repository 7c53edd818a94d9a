// Case 5, revoke with deadline 0: the owner revokes a lease whose holder is
// spinning on reads of its guarded queue page mapping. Measured: revoke() →
// the client sees its mapping dead (isRevoked(), timed in the client on
// CLOCK_MONOTONIC, fixtures/clock.ts) and revoke() → the lease free in the broker. The floor is the
// device's own part: the same number of bare device round trips. The holder spins (a CPU of its own until
// its mapping dies, as a client busy-waiting on completions does; an idle holder would sleep), holds no IOVA
// maps, and this process (the broker's) waits for the release on its event. The time to the mapping's death
// is split where the broker issues the slice revoke (the probe's first revokeSlice call): the broker's part
// before it, the device's and the kernel's after it. The kernel's part alone is a second floor, measured in
// the same run (truncate-floor.ts): a memfd page truncated under a holder spinning on it, with no broker or
// simulator.
//
//   node dist/bench/cases/revoke.js [--quick]

import type { Lease as BrokerLease } from '../../src/broker/lease.js';
import { DEFAULT_OPTIONS } from '../../src/sim/model/options.js';
import { ClientProc } from '../fixtures/client-proc.js';
import { sharedMs } from '../fixtures/clock.js';
import { BrokerProbe } from '../fixtures/probe.js';
import { ReleaseWatch } from '../fixtures/released.js';
import { metric, progress, runCase } from '../fixtures/result.js';
import { startRig } from '../fixtures/rig.js';
import { TruncateFloor } from '../fixtures/truncate-floor.js';

const epochMs = sharedMs;

runCase(
  'revoke',
  'Revoke (deadline 0): until the client mapping is dead and the lease free',
  async (quick) => {
    const n = quick ? 10 : 50;
    const rig = await startRig({ simArgs: ['--queues', '8'] });
    const probe = new BrokerProbe(rig.broker);
    // Waited for on the event: a loop of setImmediate until the release kept this process (the broker's) busy
    // on one of the two CPUs through the revoke's device round trips.
    const released = new ReleaseWatch(rig.broker.leases, epochMs);
    const client = await ClientProc.spawn();
    const toDead: number[] = [];
    const toFree: number[] = [];
    const floor: number[] = [];
    const quiesce: number[] = [];
    const sliceRevoke: number[] = [];
    const toStart: number[] = [];
    const toIssued: number[] = [];
    const issuedToDead: number[] = [];
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
        await released.seen(lease);
        const p = probe.take();
        await client.call('releaseAll');
        if (i < 2) continue; // warm-up
        toDead.push(atDead - at0);
        toFree.push(released.at.get(lease)! - at0);
        toStart.push(started.get(lease)! - at0);
        const issued = p.firstAt['revokeSlice'];
        if (issued === undefined) throw new Error('the reclaim issued no slice revoke to the device');
        toIssued.push(issued - at0);
        issuedToDead.push(atDead - issued);
        quiesce.push(p.quiesceMs);
        sliceRevoke.push(p.calls['revokeSlice']?.ms ?? 0);
        commands.add(p.commands);
        rounds.add(p.rounds);
        floor.push(await probe.roundTrips(p.commands));
      }
      progress(`${n} truncations under a spinning holder (the kernel's part alone)`);
      const truncate = await TruncateFloor.start();
      let kernel: number[];
      try {
        kernel = await truncate.run(n, 2, DEFAULT_OPTIONS.queueStride, 2); // the simulator's queue page size
      } finally {
        await truncate.close();
      }
      return {
        metrics: [
          metric('floor', 'same number of bare device round trips', 'ms', floor, { role: 'floor' }),
          metric('revoke-dead', 'revoke → client mapping dead', 'ms', toDead, { ref: 'floor' }),
          metric('revoke-free', 'revoke → lease free in broker', 'ms', toFree, { ref: 'floor' }),
          metric('revoke-start', '· revoke → reclaim starts (deadline timer)', 'ms', toStart),
          metric(
            'revoke-issued',
            '· revoke → the broker issues the slice revoke (its own work first)',
            'ms',
            toIssued,
          ),
          metric(
            'issued-dead',
            '· slice revoke issued → client mapping dead (device and kernel)',
            'ms',
            issuedToDead,
            {
              ref: 'kernel',
            },
          ),
          metric(
            'kernel',
            '· the kernel alone: page truncated → a spinning holder sees it dead (2 processes)',
            'ms',
            kernel,
            { role: 'floor' },
          ),
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
