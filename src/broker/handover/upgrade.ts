// The old broker's side of an upgrade, start to end (docs/ARCHITECTURE.md,
// "Upgrading the broker"): start the new broker with one end of a socketpair,
// wait for its hello, hold the control plane, send the state, wait for
// 'ready', then commit — or abort, kill the new process and resume, saying
// why (rollback). Only the old broker decides: the new one serves nothing
// before 'commit' (or before the old one is gone with the whole state sent).

import { spawn } from 'node:child_process';
import { VfioUserDevice } from '../../device/vfio-user-device.js';
import { DevleaseError } from '../../errors.js';
import { Fd } from '../../sys/fd.js';
import { native } from '../../sys/native.js';
import type { Broker } from '../broker.js';
import { type BrokerParts, cannotUpgrade, carriesRelayedDma, collect, hold, resume } from './collect.js';
import { stateVersionFor } from './format.js';
import { inheritedEnv, inheritedNodeOptions } from './node-options.js';
import { encodeState, HandoverWire } from './wire.js';

export interface UpgradeOptions {
  /** The new broker's entry point (bin/devlease.js of the new release); default: this one's. */
  binary?: string;
  /** The new broker's config file; default: this broker's. */
  config?: string;
  /** From start to 'ready'; past it, the upgrade rolls back. Default 20 s, at most MAX_UPGRADE_DEADLINE_MS. */
  deadlineMs?: number;
  /** The request came over the admin socket (its own request is in flight while the broker quiesces). */
  viaAdmin?: boolean;
}

/**
 * Test-only (docs/ARCHITECTURE.md, beside DEVLEASE_TEST_UPGRADE_MISBEHAVE): the old broker stops itself
 * (SIGSTOP) at this step of the handover, so a test can kill it exactly there: 'started' (the new broker said
 * hello), 'mid-transfer' (the fds sent, the state's JSON not), 'transferred' (all sent, no answer read),
 * 'ready' (the new broker is ready, no commit sent).
 */
export type TestStopStep = 'started' | 'mid-transfer' | 'transferred' | 'ready';
/**
 * The longest deadlineMs taken: past it a hung new broker would block every reload and upgrade (EBUSY) for as
 * long, and past 2^31-1 ms setTimeout fires at once, so the wait for 'ready' spun instead of waiting.
 */
export const MAX_UPGRADE_DEADLINE_MS = 600_000;
/** How long a rollback waits for the killed new broker to be gone before it reads the device again. */
export const ROLLBACK_EXIT_WAIT_MS = 5000;

function testStop(step: TestStopStep): void {
  if (process.env['DEVLEASE_TEST_UPGRADE_OLD_STOP'] === step) process.kill(process.pid, 'SIGSTOP');
}

export interface UpgradeOutcome {
  upgraded: true;
  pid: number;
  /** How long the control plane was held (ms). */
  pausedMs: number;
}

export async function upgrade(
  b: Broker,
  parts: BrokerParts,
  meta: { startedAt: Date; upgrades: number; configPath: string | null; rundir: string | null },
  opts: UpgradeOptions,
): Promise<UpgradeOutcome> {
  const ms = opts.deadlineMs;
  if (ms !== undefined && (!Number.isInteger(ms) || ms < 1 || ms > MAX_UPGRADE_DEADLINE_MS))
    throw new DevleaseError(
      'EINVAL',
      `upgrade: deadlineMs must be an integer from 1 to ${MAX_UPGRADE_DEADLINE_MS} (10 min), got ${ms}`,
    );
  const why = cannotUpgrade(b);
  if (why) throw new DevleaseError('ENOTSUP', why);
  const deadline = Date.now() + (opts.deadlineMs ?? 20_000);
  const [ours, theirs] = native.unixPair(false);
  const wire = new HandoverWire(new Fd(ours));
  const theirFd = new Fd(theirs);
  const config = opts.config ?? meta.configPath;
  const args = [opts.binary ?? process.argv[1]!, 'daemon', '--handover-fd', '3'];
  if (config) args.push('--config', config);
  if (meta.rundir) args.push('--rundir', meta.rundir);
  // The new broker runs with this one's Node options (a heap size, a preloaded agent), on its command line
  // and in NODE_OPTIONS, less those that would hold it up or change what it is (node-options.ts).
  const nodeOptions = inheritedNodeOptions(process.execArgv);
  const env = inheritedEnv(process.env);
  // Received fds queued behind a close that does not return (a client's FUSE file holding FLUSH) go to the new
  // broker open, for it to close: exec's close-on-exec would send their FLUSH and wait, and so would this thread
  // (spawn reads the exec's status). Only their numbers go: the new broker counts them against no uid (its
  // global bound alone), so a client of the uid that sent them gets a fresh share there (ARCHITECTURE.md).
  const inherited = native.closesHold();
  if (inherited.length) args.push('--close-inherited', inherited.join(','));
  let child: ReturnType<typeof spawn>;
  try {
    child = spawn(process.execPath, [...nodeOptions, ...args], {
      stdio: ['ignore', 'inherit', 'inherit', theirFd.fd],
      env,
    });
  } finally {
    native.closesResume();
  }
  theirFd.close();
  // It holds the device fd as this broker does: not a violation of the slice audit (after a rollback, until gone).
  if (child.pid) b.leases.direct?.auditor.allowBroker(child.pid);
  // Why the new broker is gone, once it is; a rollback waits for `gone` before it reads the device again.
  let exited: string | null = null;
  const gone = new Promise<void>((resolve) => {
    child.on('exit', (code, signal) => {
      exited = `the new broker exited (${signal ?? `code ${code}`})`;
      resolve();
    });
    child.on('error', (err) => {
      exited = `the new broker did not start: ${err.message}`;
      resolve();
    });
  });
  let held = false;
  let pausedAt = 0;
  const rollback = async (reason: string): Promise<never> => {
    try {
      wire.send({ t: 'abort', reason });
    } catch {
      // the new broker is gone already: nobody to tell
    }
    wire.close();
    if (exited === null) child.kill('SIGKILL');
    if (held) {
      // The new broker may have sent device requests whose replies it never read (it hung, or was killed):
      // they come to this process once it reads the device connection again, to msg_ids it never sent. Once
      // the new broker is gone (no more of its requests), reading resumes behind a resync: those replies are
      // dropped up to the answer of a request of ours. Before, the first one was a protocol error, and the
      // device connection was dropped with every lease.
      let timer: NodeJS.Timeout | undefined;
      const waited = new Promise((r) => {
        timer = setTimeout(r, ROLLBACK_EXIT_WAIT_MS);
      });
      await Promise.race([gone, waited]);
      clearTimeout(timer);
      resume(b, parts);
      if (b.device instanceof VfioUserDevice) await b.device.client.resync().catch(() => {});
    }
    b.audit.write({ event: 'upgrade-rolled-back', reason, pid: child.pid ?? null });
    b.log(`upgrade rolled back: ${reason}`);
    throw new DevleaseError('EAGAIN', `upgrade rolled back: ${reason}; the broker carries on`);
  };
  const explain = (r: 'gone' | 'timeout') =>
    r === 'timeout' ? 'the new broker was not ready in time' : (exited ?? 'the new broker hung up');
  b.audit.write({
    event: 'upgrade-start',
    pid: child.pid ?? null,
    binary: args[0],
    nodeOptions,
    nodeOptionsEnv: env['NODE_OPTIONS'] ?? null,
  });
  const hello = await wire.next(deadline);
  if (typeof hello === 'string') return rollback(explain(hello));
  const versions = hello.msg['versions'];
  const version = stateVersionFor(
    b.device,
    !!b.leases.direct?.handingOut,
    b.leases.withSliceCountLost().length > 0,
    carriesRelayedDma(b),
  );
  if (hello.msg.t !== 'hello' || !Array.isArray(versions) || !versions.includes(version))
    return rollback(
      `the new broker does not read state version ${version} (it reads ${JSON.stringify(versions)})`,
    );
  testStop('started');
  try {
    pausedAt = performance.now();
    await hold(b, parts, opts.viaAdmin ? 1 : 0, deadline);
    held = true;
    const { doc, fds } = collect(b, parts, meta);
    // Direct slices handed out (or a slice count lost) after the hello make the document one the new broker may
    // not read.
    if (!versions.includes(doc.version))
      throw new Error(
        `the new broker does not read state version ${doc.version} (it reads ${JSON.stringify(versions)})`,
      );
    wire.sendState(encodeState(doc), fds, () => testStop('mid-transfer'));
    testStop('transferred');
  } catch (err) {
    return rollback(`quiesce or transfer failed: ${(err as Error).message}`);
  }
  const answer = await wire.next(deadline);
  if (typeof answer === 'string') return rollback(explain(answer));
  if (answer.msg.t !== 'ready')
    return rollback(`the new broker refused the state: ${String(answer.msg['reason'] ?? answer.msg.t)}`);
  testStop('ready');
  // Asked a last time: a recovery that began during the transfer suspended grants and reclaims what the state
  // says is live; the new broker would carry those leases on a device nobody recovers. (A kernel device's AER
  // error no longer starts one here: its signals are held, for the broker that carries on to read.)
  const late = cannotUpgrade(b);
  if (late) return rollback(`the broker cannot be upgraded now: ${late}`);
  // The one decision: from here the new broker owns everything, and this one only exits.
  try {
    wire.send({ t: 'commit' });
  } catch {
    // EPIPE: the new broker went away after saying ready; nothing was handed over yet, so carry on
    return rollback(explain('gone'));
  }
  const pausedMs = performance.now() - pausedAt;
  parts.metrics?.stopListening();
  child.unref();
  // This broker exits without close(): the counts of denials it suppressed go out now, not with it.
  b.audit.flushDenials();
  b.audit.write({ event: 'upgrade-handed-over', pid: child.pid ?? null, pausedMs });
  b.emit('handed-over', child.pid);
  return { upgraded: true, pid: child.pid!, pausedMs };
}
