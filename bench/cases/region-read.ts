// Case: one 4-byte REGION_READ of a BAR0 register, round trip from
// devlease's own VfioUserClient, against servers measured in the same run:
//   - echo: the floor, a minimal server answering from a buffer over the same
//     SOCK_STREAM wire (fixtures/region-echo-server.ts);
//   - sim: `devlease sim`, reading SCRATCH (a register the owner can write,
//     so nothing can answer it from a constant);
//   - gpio: libvfio-user's gpio-pci-idio-16 sample (a stock C server), its
//     BAR2 input register, built by scripts/peers/libvfio-user.sh (cached;
//     the tarball as for npm run test:interop). The sim row is judged
//     against it (issue: "≤ 1.5× libvfio-user's gpio-pci-idio-16").
// Servers are measured in alternating rounds on open connections, so drift
// in machine load falls on all of them alike. To add a server, append a
// Target: its start() returns the socket path, its pid and the register to read.
//
// Placement is pinned (taskset, util-linux): a one-in-flight round trip on a VM costs ~25 µs when client
// and server share a CPU and ~100 µs when each wake-up has to rouse the other, halted vCPU (measured on the
// 2-vCPU CI machines: the same server moved between the two modes from one 1000-read round to the next,
// and which mode each server fell into decided the ratio). The goal rows pin client and servers to one CPU
// (what each server's own code costs); rows marked "across CPUs" pin the servers to another CPU than the
// client (the wake-up cost, the same for every server).
//
//   node dist/bench/cases/region-read.js [--quick]

import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { REG_SCRATCH } from '../../src/sim/model/datasheet.js';
import { type Child, spawnNode, startSim } from '../../src/util/processes.js';
import { VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX } from '../../src/vfio/uapi/vfio.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { trackChild } from '../fixtures/cleanup.js';
import { allowedCpus, pinAll } from '../fixtures/placement.js';
import { type Metric, metric, progress, runCase } from '../fixtures/result.js';
import { tempDir } from '../fixtures/rig.js';

/** A server to read a register from: where it listens and which 4 bytes to read. */
export interface RegionReadServer {
  socket: string;
  /** The server process, pinned to a CPU for each round. */
  pid: number;
  region: number;
  offset: number;
  close(): Promise<void>;
}

export interface Target {
  id: string;
  label: string;
  role: Metric['role'];
  /** id of the target this one is compared with. */
  ref?: string;
  start(dir: string): Promise<RegionReadServer>;
}

const ECHO_SERVER = new URL('../fixtures/region-echo-server.js', import.meta.url).pathname;

async function startEcho(dir: string): Promise<RegionReadServer> {
  const socket = join(dir, 'echo.sock');
  let ready!: () => void;
  const isReady = new Promise<void>((r) => {
    ready = r;
  });
  const child: Child = spawnNode(ECHO_SERVER, [socket], (line) => line === 'ready' && ready());
  trackChild(child.proc);
  await Promise.race([
    isReady,
    child.exited.then((c) => {
      throw new Error(`region-echo-server exited with ${c} before it was ready`);
    }),
  ]);
  return {
    socket,
    pid: child.pid,
    region: VFIO_PCI_BAR0_REGION_INDEX,
    offset: 0,
    close: async () => void (await child.stop()),
  };
}

async function startDevleaseSim(dir: string): Promise<RegionReadServer> {
  const socket = join(dir, 'sim.sock');
  const sim = await startSim(socket, ['--queues', '4']);
  trackChild(sim.proc);
  return {
    socket,
    pid: sim.pid,
    region: VFIO_PCI_BAR0_REGION_INDEX,
    offset: REG_SCRATCH,
    close: async () => void (await sim.stop()),
  };
}

const PEER_BUILD = new URL('../../../scripts/peers/libvfio-user.sh', import.meta.url).pathname;

/** libvfio-user's gpio sample, built (or found in the cache) by the interop suite's script. */
async function startGpio(dir: string): Promise<RegionReadServer> {
  const build = spawnSync('bash', [PEER_BUILD], { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
  const samples = build.stdout?.trim().split('\n').pop();
  if (build.status !== 0 || !samples) {
    throw new Error(
      `region-read: building libvfio-user's samples failed (${PEER_BUILD}, exit ${build.status})`,
    );
  }
  const socket = join(dir, 'gpio.sock');
  const proc = spawn(join(samples, 'gpio-pci-idio-16'), [socket], { stdio: 'ignore' });
  trackChild(proc);
  const deadline = Date.now() + 10_000;
  while (!existsSync(socket)) {
    if (proc.exitCode !== null || Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`region-read: gpio-pci-idio-16 did not listen on ${socket} (exit ${proc.exitCode})`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  const exited = new Promise((r) => proc.once('close', r));
  return {
    socket,
    pid: proc.pid!,
    region: VFIO_PCI_BAR2_REGION_INDEX,
    offset: 0,
    close: async () => {
      proc.kill('SIGTERM');
      await exited;
    },
  };
}

export const TARGETS: Target[] = [
  { id: 'echo', label: 'raw vfio-user echo server (floor)', role: 'floor', start: startEcho },
  {
    id: 'gpio',
    label: "libvfio-user's gpio-pci-idio-16, BAR2 input",
    role: 'baseline',
    ref: 'echo',
    start: startGpio,
  },
  { id: 'sim', label: '`devlease sim`, BAR0 SCRATCH', role: 'subject', ref: 'gpio', start: startDevleaseSim },
];

/** `n` sequential 4-byte REGION_READs on an open client; each sample in µs. */
export async function regionReadRtt(
  client: VfioUserClient,
  server: Pick<RegionReadServer, 'region' | 'offset'>,
  n: number,
): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await client.regionRead(server.region, server.offset, 4);
    out.push((performance.now() - t0) * 1000);
  }
  return out;
}

/** What pinAll's error names. */
const PINS = 'region-read pins client and servers';

interface Placement {
  /** Suffix of the rows' ids ('' for the goal rows). */
  id: string;
  label: string;
  client: string;
  server: string;
}

runCase('region-read', 'Register read: 4-byte REGION_READ round trip from VfioUserClient', async (quick) => {
  const rounds = quick ? 4 : 20;
  const perRound = quick ? 500 : 1000;
  const warmup = quick ? 200 : 1000;
  const cpus = availableParallelism();
  const all = allowedCpus(); // put back as found
  const placements: Placement[] = [{ id: '', label: '', client: '0', server: '0' }];
  if (cpus > 1) placements.push({ id: '-x', label: ', across CPUs', client: '0', server: '1' });
  const tmp = tempDir('region-read');
  const live: {
    target: Target;
    server: RegionReadServer;
    client: VfioUserClient;
    samples: Map<string, number[]>;
  }[] = [];
  try {
    for (const target of TARGETS) {
      const server = await target.start(tmp.dir);
      const client = await VfioUserClient.connect(server.socket).catch(async (err) => {
        await server.close();
        throw err;
      });
      live.push({ target, server, client, samples: new Map(placements.map((p) => [p.id, []])) });
      await regionReadRtt(client, server, warmup);
    }
    progress(
      `${rounds} rounds of ${perRound} reads per server and placement (${placements.map((p) => p.label || 'one CPU').join(', ')}), alternating: ${TARGETS.map((t) => t.id).join(', ')}`,
    );
    for (let r = 0; r < rounds; r++) {
      for (const p of placements) {
        pinAll(process.pid, p.client, PINS);
        for (const l of live) pinAll(l.server.pid, p.server, PINS);
        for (const l of live)
          l.samples.get(p.id)!.push(...(await regionReadRtt(l.client, l.server, perRound)));
      }
    }
    const metrics = placements.flatMap((p) =>
      live.map((l) =>
        metric(
          l.target.id + p.id,
          p.id ? `· ${l.target.label}${p.label}` : l.target.label,
          'µs',
          l.samples.get(p.id)!,
          {
            role: p.id && l.target.role === 'subject' ? 'subject' : l.target.role,
            ...(l.target.ref ? { ref: l.target.ref + p.id } : {}),
          },
        ),
      ),
    );
    return {
      metrics,
      notes: {
        client: 'VfioUserClient in the case process, one read in flight',
        placement: `goal rows: client and servers pinned to CPU 0; "across CPUs": client on CPU 0, servers on CPU 1 (taskset -a); ${cpus} CPUs`,
        servers: Object.fromEntries(
          live.map((l) => [l.target.id, { region: l.server.region, offset: l.server.offset }]),
        ),
      },
    };
  } finally {
    pinAll(process.pid, all, PINS);
    for (const l of live) {
      l.client.close();
      await l.server.close();
    }
    tmp.remove();
  }
});
