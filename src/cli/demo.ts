// `devlease demo`: the whole system on the simulator. Starts the SA-1
// simulator and the broker in a temporary run directory, launches N client
// processes that each lease a queue and run a verified workload, revokes one
// lease with a deadline and SIGKILLs another part-way through, shows the
// reclaim and the freed queues being leased again, and ends with a summary.
// Exits 0 only if every byte the clients checked was right.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { type ClientRow, HEAD, LiveView, renderTable, rowCells } from '../demo/view.js';
import { type Child, spawnNode, startBroker, startSim } from '../util/processes.js';
import { adminRequest } from './admin.js';
import { intOption } from './int-option.js';

const CLIENT_WORKER = fileURLToPath(new URL('../demo/client-worker.js', import.meta.url));
/**
 * The revoked client's notice → release window. The notice costs the client a broker round trip (it reads
 * the deadline), so on a crowded 2-core machine 500 ms was not always enough to show the voluntary release.
 */
const REVOKE_DEADLINE_MS = 2000;

const USAGE = `usage: devlease demo [--clients N] [--seconds S] [--json] [--no-tty]
  --clients  client processes (default 4, 1..32)
  --seconds  how long the workload runs, whole seconds (default 10, 2..3600)
  --json     print the summary as JSON
  --no-tty   plain progress lines instead of the live table`;

interface Slot extends ClientRow {
  child: Child;
}

/** One JSON line a demo client prints (src/demo/client-worker.ts); fields by `type`. */
interface ClientLine
  extends Partial<
    Pick<ClientRow, 'lease' | 'queue' | 'ops' | 'bytes' | 'verifiedBytes' | 'mismatches' | 'p50us' | 'p99us'>
  > {
  type: 'leased' | 'stats' | 'released' | 'revoke-requested' | 'error';
  reason?: string;
  msLeft?: number;
  code?: string;
  message?: string;
}

export async function demoCommand(argv: string[]): Promise<number> {
  let values: { clients?: string; seconds?: string; json?: boolean; 'no-tty'?: boolean; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        clients: { type: 'string' },
        seconds: { type: 'string' },
        json: { type: 'boolean' },
        'no-tty': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    process.stderr.write(`devlease demo: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const nClients = intOption('--clients', values.clients ?? '4', 1, 32);
  const seconds = intOption('--seconds', values.seconds ?? '10', 2, 3600);
  if (typeof nClients === 'object' || typeof seconds === 'object') {
    const bad = typeof nClients === 'object' ? nClients : (seconds as { error: string });
    process.stderr.write(`devlease demo: ${bad.error}\n${USAGE}\n`);
    return 2;
  }
  const tty = !values['no-tty'] && !values.json && process.stdout.isTTY === true;
  const view = new LiveView(tty, values.json ? process.stderr : process.stdout);
  const dir = mkdtempSync(join(tmpdir(), 'devlease-demo-'));
  const children: Child[] = [];
  const slots: Slot[] = [];
  let stopping = false;
  /** Why the demo stops early, as an exit code (128 + the signal), or 0. */
  let interrupted = 0;
  const stopOn = (code: number) => () => {
    interrupted ||= code;
    stopping = true;
  };
  // Each of these ends the demo the way Ctrl-C does: its children stopped, its run directory removed. SIGHUP (the
  // terminal closed) and a reader gone from stdout or stderr (`devlease demo | head`: EPIPE, an 'error' event
  // that was uncaught) killed the demo outright, its simulator left running and its run directory left behind.
  const onSigint = stopOn(130);
  const onSighup = stopOn(129);
  const onPipeError = stopOn(141);
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigint);
  process.on('SIGHUP', onSighup);
  process.stdout.on('error', onPipeError);
  process.stderr.on('error', onPipeError);

  const simSock = join(dir, 'sa1.sock');
  let broker: Awaited<ReturnType<typeof startBroker>> | null = null;
  try {
    view.event(`run directory ${dir}`);
    const sim = await startSim(simSock, ['--queues', String(Math.max(8, nClients + 4))]);
    children.push(sim);
    view.event(`SA-1 simulator pid ${sim.pid} serving ${simSock}`);
    broker = await startBroker(`vfio-user:${simSock}`, ['--rundir', join(dir, 'run')], (ev) => {
      if (ev.event === 'released') {
        view.event(
          `broker: lease ${ev.lease} reclaimed in ${Number(ev.ms).toFixed(2)} ms (slices ${ev.revoked ? 'revoked' : 'released'})`,
        );
        if (!stopping) launch(`re-lease after ${ev.lease} was reclaimed`);
      } else if (ev.event === 'reclaim') view.event(`broker: reclaiming ${ev.lease}: ${ev.reason}`);
      else if (ev.event === 'deny') view.event(`broker: denied pid ${ev.pid}: ${ev.reason}`);
    });
    children.push(broker);
    const queueSock = broker.sockets.queue!;
    view.event(`broker pid ${broker.pid}: lease socket ${queueSock}`);

    const launch = (why: string) => {
      const slot: Slot = {
        slot: slots.length + 1,
        pid: 0,
        lease: '',
        queue: null,
        state: 'starting',
        ops: 0,
        bytes: 0,
        verifiedBytes: 0,
        mismatches: 0,
        p50us: 0,
        p99us: 0,
        startedAt: Date.now(),
        endedAt: null,
        child: undefined as unknown as Child,
      };
      slot.child = spawnNode(CLIENT_WORKER, [queueSock], (line) => onClientLine(slot, line));
      slot.pid = slot.child.pid;
      children.push(slot.child);
      slots.push(slot);
      void slot.child.exited.then((code) => {
        slot.endedAt ??= Date.now();
        if (slot.state === 'running' || slot.state === 'starting')
          slot.state = code === 0 ? 'exited' : `exit ${code}`;
      });
      if (why) view.event(`client #${slot.slot} pid ${slot.pid} started (${why})`);
    };
    const onClientLine = (slot: Slot, line: string) => {
      let m: ClientLine;
      try {
        m = JSON.parse(line) as ClientLine;
      } catch {
        return;
      }
      if (m.type === 'leased') {
        slot.lease = m.lease ?? '';
        slot.queue = m.queue ?? null;
        slot.state = 'running';
        view.event(`client #${slot.slot} pid ${slot.pid} leased ${m.lease} (queue ${m.queue})`);
      } else if (m.type === 'stats' || m.type === 'released') {
        Object.assign(slot, {
          ops: m.ops,
          bytes: m.bytes,
          verifiedBytes: m.verifiedBytes,
          mismatches: m.mismatches,
          p50us: m.p50us,
          p99us: m.p99us,
        });
        if (m.type === 'released') {
          slot.state = 'released';
          slot.endedAt = Date.now();
          view.event(`client #${slot.slot} let go of ${slot.lease}: ${m.reason}`);
        }
      } else if (m.type === 'revoke-requested') {
        view.event(`client #${slot.slot} got the revocation notice (${m.msLeft} ms left)`);
      } else if (m.type === 'error') {
        slot.state = `error ${m.code ?? ''}`.trim();
        view.event(`client #${slot.slot} error: ${m.message}`);
      }
    };
    for (let i = 0; i < nClients; i++) launch('');

    const t0 = Date.now();
    const end = t0 + seconds * 1000;
    let revoked = false;
    let revokedLease = '';
    let killed = false;
    while (Date.now() < end && !stopping) {
      await new Promise((r) => setTimeout(r, tty ? 200 : 1000));
      const t = (Date.now() - t0) / (seconds * 1000);
      const running = slots.filter((s) => s.state === 'running');
      if (!revoked && t >= 0.35 && running[0]) {
        revoked = true;
        const victim = running[0];
        revokedLease = victim.lease;
        view.event(
          `owner: revoke ${victim.lease} (client #${victim.slot}) with a ${REVOKE_DEADLINE_MS} ms deadline`,
        );
        await adminRequest(join(broker.dir, 'admin.sock'), {
          op: 'revoke',
          id: victim.lease,
          deadlineMs: REVOKE_DEADLINE_MS,
        }).catch((err: Error) => view.event(`owner: the revoke was refused: ${err.message}`));
      }
      if (!killed && t >= 0.55 && nClients > 1) {
        const victim = slots.find((s) => s.state === 'running' && s.lease !== revokedLease);
        if (victim) {
          killed = true;
          view.event(`owner: SIGKILL client #${victim.slot} pid ${victim.pid} holding ${victim.lease}`);
          victim.child.proc.kill('SIGKILL');
          victim.state = 'killed';
          victim.endedAt = Date.now();
        }
      }
      view.draw(slots, `t=${((Date.now() - t0) / 1000).toFixed(1)}s of ${seconds}s`);
    }
    stopping = true;
    await Promise.all(slots.map((s) => s.child.stop('SIGTERM')));
    // Let the broker finish reclaiming what the stopped clients held, then stop it and the simulator.
    const admin = join(broker.dir, 'admin.sock');
    let leasesLeft: unknown[] = [];
    for (let i = 0; i < 100; i++) {
      leasesLeft = (await adminRequest(admin, { op: 'leases' }).catch(() => [])) as unknown[];
      if (leasesLeft.length === 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    for (const c of children.slice(0, 2).reverse()) await c.stop('SIGTERM');
    view.draw(slots, 'stopped');
    view.close();
    return summarize(slots, values.json === true, interrupted, leasesLeft.length, revoked, killed);
  } catch (err) {
    process.stderr.write(`devlease demo: ${(err as Error).message}\n`);
    return 1;
  } finally {
    stopping = true;
    for (const c of children.reverse()) await c.stop('SIGTERM').catch(() => 0);
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigint);
    process.off('SIGHUP', onSighup);
    rmSync(dir, { recursive: true, force: true });
    // The pipe handlers stay: a write after this one (the process's last) must not be an uncaught EPIPE either.
  }
}

function summarize(
  slots: Slot[],
  json: boolean,
  interrupted: number,
  leasesLeft: number,
  revoked: boolean,
  killed: boolean,
): number {
  const verified = slots.reduce((n, s) => n + s.verifiedBytes, 0);
  const mismatches = slots.reduce((n, s) => n + s.mismatches, 0);
  const errors = slots.filter((s) => s.state.startsWith('error')).length;
  const ok = mismatches === 0 && errors === 0 && verified > 0 && interrupted === 0 && leasesLeft === 0;
  const summary = {
    ok,
    clients: slots.length,
    verifiedBytes: verified,
    mismatches,
    errors,
    revokedOne: revoked,
    killedOne: killed,
    leasesLeftAfterStop: leasesLeft,
    rows: slots.map(({ child: _c, ...r }) => r),
  };
  if (json) process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  else {
    process.stdout.write(`\n${renderTable(HEAD, slots.map(rowCells))}\n\n`);
    process.stdout.write(
      `summary: ${slots.length} clients, ${(verified / 1e6).toFixed(1)} MB verified, ${mismatches} mismatches, ${errors} client errors` +
        `${revoked ? ', one lease revoked' : ''}${killed ? ', one client killed' : ''} → ${ok ? 'PASS' : 'FAIL'}\n`,
    );
  }
  return interrupted || (ok ? 0 : 1);
}
