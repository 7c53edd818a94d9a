// Case: a 4-byte read of a leased slice, direct (a load from the client's own
// mapping: no broker on the path) vs through the broker (REGION_READ, what a
// `cooperative` slice costs), in one run on the simulator path; and what the
// /proc audit of `audited` slices (src/broker/audit-scan) costs: one scan per
// host process (the floor: nobody maps the device file) and per client
// mapping a slice (stand-in processes mapping a regular file, which the scan
// matches exactly as it matches a VFIO device file).
//
//   node dist/bench/cases/slice-access.js [--quick]

import { closeSync, ftruncateSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { identityOfFd, scanProc } from '../../src/broker/audit-scan/proc-scan.js';
import { connect } from '../../src/client/index.js';
import { type Child, spawnNode } from '../../src/util/processes.js';
import { trackChild } from '../fixtures/cleanup.js';
import { metric, progress, runCase } from '../fixtures/result.js';
import { startRig, tempDir } from '../fixtures/rig.js';

const MAPPER = new URL('../fixtures/slice-mapper.js', import.meta.url).pathname;

runCase('slice-access', 'slice access direct vs through the broker; audit scan cost', async (quick) => {
  const samples = quick ? 200 : 2000;
  const rig = await startRig({ simArgs: ['--queues', '4'] });
  const direct: number[] = [];
  const viaBroker: number[] = [];
  try {
    const lease = await connect({ socket: rig.socket });
    try {
      const index = lease.info.regions[0]!.index;
      const dv = new DataView(lease.region(index).buffer);
      let sink = 0;
      const batch = 1000;
      for (let i = 0; i < samples; i++) {
        // One load is below the clock's resolution: a sample is the mean of a batch.
        const t0 = process.hrtime.bigint();
        for (let j = 0; j < batch; j++) sink ^= dv.getUint32(0, true);
        direct.push(Number(process.hrtime.bigint() - t0) / 1e3 / batch);
        const t1 = process.hrtime.bigint();
        await lease.client.regionRead(index, 0, 4);
        viaBroker.push(Number(process.hrtime.bigint() - t1) / 1e3);
      }
      if (sink === 0x7fffffff) progress('(sink)');
    } finally {
      lease.close();
    }
  } finally {
    await rig.close();
  }

  progress('audit scan cost');
  const tmp = tempDir('audit');
  const file = join(tmp.dir, 'bar');
  const fd = openSync(file, 'w+');
  const otherFd = openSync(join(tmp.dir, 'unmapped'), 'w+');
  const clients = quick ? 4 : 16;
  const kids: Child[] = [];
  const empty: number[] = [];
  const full: number[] = [];
  let processes = 0;
  try {
    ftruncateSync(fd, clients * 4096);
    const target = identityOfFd(fd);
    const other = identityOfFd(otherFd);
    const rounds = quick ? 10 : 40;
    for (let i = 0; i < rounds; i++) {
      const r = scanProc(target);
      empty.push(r.us);
      processes = r.processes;
    }
    await Promise.all(
      Array.from({ length: clients }, (_, i) => {
        let ready!: () => void;
        const p = new Promise<void>((r) => {
          ready = r;
        });
        const c = spawnNode(MAPPER, [file, String(i * 4096)], (l) => l === 'ready' && ready());
        trackChild(c.proc);
        kids.push(c);
        return p;
      }),
    );
    for (let i = 0; i < rounds; i++) full.push(scanProc(target).us);
    // Interleaved with scans of the same /proc for a file nobody maps, so load drift falls on both alike.
    empty.length = 0;
    for (let i = 0; i < rounds; i++) {
      empty.push(scanProc(other).us);
      full.push(scanProc(target).us);
    }
  } finally {
    await Promise.all(kids.map((k) => k.stop()));
    closeSync(fd);
    closeSync(otherFd);
    tmp.remove();
  }
  const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
  const perProcess = empty.map((u) => u / Math.max(1, processes));
  const perClient = (median(full) - median(empty)) / clients;
  return {
    metrics: [
      metric('direct', '4-byte read, direct from the mapping', 'µs', direct, { role: 'floor' }),
      metric('broker', '4-byte read, REGION_READ through the broker', 'µs', viaBroker, { ref: 'direct' }),
      metric('scan', `audit scan of /proc (${processes} processes), file nobody maps`, 'µs', empty, {
        role: 'floor',
      }),
      metric('scan-clients', `audit scan, ${clients} of them mapping a slice of the file`, 'µs', full, {
        ref: 'scan',
      }),
      metric('scan-per-process', 'audit scan cost per host process', 'µs', perProcess),
    ],
    // A client is one more host process plus its few matching maps lines: the difference of the medians per
    // client (below the noise of a loaded machine, it can come out negative).
    notes: { processes, clients, batch: 1000, scanPerClientUs: perClient },
  };
});
