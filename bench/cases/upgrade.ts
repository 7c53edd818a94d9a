// Broker upgrade in place (issue 18): what a handover costs the clients.
// A simulator and a `devlease daemon` (each its own process) and one client
// process looping NOP / 4 KiB COPY on its queue (spinning, no interrupt) —
// the hot path, which never passes through the broker. Alternating windows,
// the same run: a baseline window (no upgrade) then an upgrade window (one
// `devlease upgrade`), both with this process sending `status` requests back
// to back on the admin socket. Measured: the control plane's pause (the
// upgrade's own pausedMs), the worst `status` latency per window (a control
// request issued during the handover waits for it), and the hot path's worst
// op per window and its latency distribution — each against its baseline.
//
//   node dist/bench/cases/upgrade.js [--quick]

import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { adminRequest } from '../../src/cli/admin.js';
import { spawnSimulator } from '../../src/sim/host/child.js';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { trackChild, trackDir } from '../fixtures/cleanup.js';
import { ClientProc } from '../fixtures/client-proc.js';
import { metric, progress, runCase } from '../fixtures/result.js';

type Hot = { n: number; max: number; sample: number[] };

runCase('upgrade', 'Broker upgrade in place: control-plane pause, hot path during it', async (quick) => {
  const rounds = quick ? 3 : 12;
  const dir = mkdtempSync(join(tmpdir(), 'devlease-bench-upgrade-'));
  trackDir(dir);
  const sim = await spawnSimulator({ socketPath: join(dir, 'sim.sock'), numQueues: 8 });
  trackChild(sim.process);
  const admin = join(dir, 'run', 'sa1', 'admin.sock');
  const daemon = spawn(
    process.execPath,
    [DEVLEASE_BIN, 'daemon', '--device', `vfio-user:${sim.socketPath}`, '--rundir', join(dir, 'run')],
    { stdio: ['ignore', 'ignore', 2] },
  );
  trackChild(daemon);
  // The serving broker after upgrades is not our child: killed by pid when this process exits, whatever happens.
  let brokerPid = daemon.pid!;
  process.on('exit', () => {
    try {
      process.kill(brokerPid, 'SIGKILL');
    } catch {
      // gone already
    }
  });
  const client = await ClientProc.spawn();
  try {
    for (let i = 0; ; i++) {
      try {
        brokerPid = ((await adminRequest(admin, { op: 'status' }, 2000)) as { pid: number }).pid;
        break;
      } catch (err) {
        if (i > 300) throw new Error(`the daemon did not answer: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    await client.call('lease', { socket: join(dir, 'run', 'sa1', 'queue.sock') });

    // `status` back to back until `done` settles: every latency (ms) and the worst.
    const controlLoop = async (done: Promise<unknown>): Promise<number[]> => {
      let over = false;
      void done.finally(() => {
        over = true;
      });
      const lat: number[] = [];
      while (!over) {
        const t0 = performance.now();
        await adminRequest(admin, { op: 'status' }, 120_000);
        lat.push(performance.now() - t0);
      }
      return lat;
    };
    const paused: number[] = [];
    const ctlBase: number[] = [];
    const ctlUp: number[] = [];
    const ctlWorstBase: number[] = [];
    const ctlWorstUp: number[] = [];
    const hotBase: number[] = [];
    const hotUp: number[] = [];
    const worstBase: number[] = [];
    const worstUp: number[] = [];
    let windowMs = 1500;
    progress(`${rounds} rounds: a baseline window, then an upgrade window`);
    for (let r = 0; r < rounds; r++) {
      // Baseline: as long as the last upgrade window, the same control traffic, no upgrade.
      await client.call('hotStart');
      const base = await controlLoop(new Promise((res) => setTimeout(res, windowMs)));
      const hb = await client.call<Hot>('hotStop');
      // Upgrade window.
      await client.call('hotStart');
      const t0 = performance.now();
      const up = adminRequest(admin, { op: 'upgrade' }, 120_000) as Promise<{
        pid: number;
        pausedMs: number;
      }>;
      const during = await controlLoop(up);
      const outcome = await up;
      windowMs = performance.now() - t0;
      const hu = await client.call<Hot>('hotStop');
      brokerPid = outcome.pid;
      paused.push(outcome.pausedMs);
      ctlBase.push(...base);
      ctlUp.push(...during);
      ctlWorstBase.push(Math.max(...base));
      ctlWorstUp.push(Math.max(...during));
      hotBase.push(...hb.sample);
      hotUp.push(...hu.sample);
      worstBase.push(hb.max);
      worstUp.push(hu.max);
    }
    return {
      metrics: [
        metric('ctl-base', 'status request, no upgrade', 'ms', ctlBase, { role: 'baseline' }),
        metric('ctl-upgrade', 'status request, during an upgrade window', 'ms', ctlUp, { ref: 'ctl-base' }),
        metric('ctl-worst-base', 'worst status request per window, no upgrade', 'ms', ctlWorstBase, {
          role: 'baseline',
        }),
        metric('ctl-worst-upgrade', 'worst status request per upgrade window', 'ms', ctlWorstUp, {
          ref: 'ctl-worst-base',
        }),
        metric('paused', 'control plane held (upgrade pausedMs)', 'ms', paused),
        metric('hot-base', 'hot-path op (NOP/COPY 4K), no upgrade', 'µs', hotBase, { role: 'baseline' }),
        metric('hot-upgrade', 'hot-path op, upgrade window', 'µs', hotUp, { ref: 'hot-base' }),
        metric('hot-worst-base', 'worst hot-path op per window, no upgrade', 'µs', worstBase, {
          role: 'baseline',
        }),
        metric('hot-worst-upgrade', 'worst hot-path op per upgrade window', 'µs', worstUp, {
          ref: 'hot-worst-base',
        }),
      ],
      notes: {
        rounds,
        simulator: '--queues 8, default --idle-poll-us 50',
        window: 'baseline window as long as the previous upgrade window (first: 1.5 s)',
      },
    };
  } finally {
    await client.exit();
    // The broker first (it exits once its device connection is closed cleanly), then the simulator.
    for (let i = 0; i < 200; i++) {
      try {
        process.kill(brokerPid, i === 0 ? 'SIGTERM' : 0);
      } catch {
        break; // gone
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    await sim.close();
  }
});
