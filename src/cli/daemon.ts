// `devlease daemon --device vfio-user:PATH --config FILE`: the broker.

import { parseArgs } from 'node:util';
import { Broker } from '../broker/broker.js';
import { type BrokerConfig, ConfigError, defaultConfig, loadConfig } from '../broker/config.js';
import { checkConfigFiles } from '../broker/config-files.js';
import { adoptDevice } from '../broker/handover/adopt.js';
import { type BrokerState, READABLE_VERSIONS, refusal } from '../broker/handover/format.js';
import { decodeState, HandoverWire } from '../broker/handover/wire.js';
import type { Device } from '../device/device.js';
import { KernelDevice } from '../device/kernel/device.js';
import { openDevice } from '../device/open.js';
import { VfioUserDevice } from '../device/vfio-user-device.js';
import { Fd } from '../sys/fd.js';
import { type ListenSocket, takeListenFds } from '../sys/listen-fds.js';
import { native } from '../sys/native.js';
import { brokerLine, createLogger } from './logger.js';

const USAGE = `usage: devlease daemon --device vfio-user:PATH|pci:DDDD:BB:DD.F [--config FILE] [--rundir DIR]
       devlease daemon --device-fd N [--iommufd-fd M] [--config FILE] [--rundir DIR]
  --device      vfio-user:PATH (a vfio-user server, e.g. 'devlease sim'), or pci:DDDD:BB:DD.F (kernel VFIO)
  --device-fd   an inherited vfio cdev fd (/dev/vfio/devices/vfioN) opened by a privileged launcher
  --iommufd-fd  an inherited iommufd (/dev/iommu) for it; without one, /dev/iommu is opened here
  --config      broker configuration (TOML, see docs/CONFIG.md); defaults apply without one
  --rundir      overrides the config's rundir
  --handover-fd an upgrade's socket (started by the running broker: devlease upgrade, SIGUSR2); the device,
                sockets, sessions and leases come over it instead of --device
  --close-inherited N,N,...  with --handover-fd: fds the old broker had queued to close (their close may wait
                on a client's file system), left open across the exec for this broker to close`;

/**
 * The old broker's queued closes (--close-inherited): closed as received fds are, on the closer thread where
 * the close may wait. Never looked at otherwise (an fstat of a FUSE file may ask its server). Whose they were
 * is not handed over: they count against the closer's global bound only, not a uid's share. A number that is
 * not open (EBADF) or not a number is skipped, saying so: the new broker starts either way.
 */
function closeInherited(list: string | undefined): void {
  if (list === undefined) return;
  for (const item of list.split(',')) {
    const n = Number(item);
    try {
      if (!/^\d+$/.test(item) || n <= 3) throw new Error('not an inherited descriptor number above 3');
      native.closeReceived(n);
    } catch (err) {
      process.stderr.write(`devlease daemon: --close-inherited ${item}: ${(err as Error).message}\n`);
    }
  }
}

/**
 * Why `value` of option --`name` names no inherited descriptor (decimal digits, not '0x4', '1e1', ' 4'; 3 up to
 * INT_MAX), or null.
 */
function descriptorProblem(name: string, value: string): string | null {
  const ok = /^\d+$/.test(value) && Number(value) >= 3 && Number(value) <= 2 ** 31 - 1;
  return ok ? null : `--${name} must be an inherited descriptor number >= 3, got '${value}'`;
}

/** An inherited descriptor number from the command line, or an error message. */
function inheritedFd(name: string, value: string): Fd | string {
  const n = Number(value);
  const problem = descriptorProblem(name, value);
  if (problem) return problem;
  try {
    native.fstat(n); // EBADF now rather than at the first ioctl
    return new Fd(n);
  } catch (err) {
    return `--${name} ${value}: ${(err as Error).message}`;
  }
}

async function openFromArgs(values: { device?: string; 'device-fd'?: string; 'iommufd-fd'?: string }) {
  if (values['device-fd'] === undefined) {
    if (values['iommufd-fd'] !== undefined) throw new Error('--iommufd-fd goes with --device-fd');
    return openDevice(values.device!);
  }
  const device = inheritedFd('device-fd', values['device-fd']);
  if (typeof device === 'string') throw new Error(device);
  let iommufd: Fd | undefined;
  if (values['iommufd-fd'] !== undefined) {
    const fd = inheritedFd('iommufd-fd', values['iommufd-fd']);
    if (typeof fd === 'string') {
      device.close();
      throw new Error(fd);
    }
    iommufd = fd;
  }
  const { openKernelDevice } = await import('../device/kernel/open.js');
  return openKernelDevice({ deviceFd: device, ...(iommufd ? { iommufdFd: iommufd } : {}) });
}

export async function daemonCommand(argv: string[]): Promise<number> {
  let values: {
    device?: string;
    'device-fd'?: string;
    'iommufd-fd'?: string;
    config?: string;
    rundir?: string;
    'handover-fd'?: string;
    'close-inherited'?: string;
    help?: boolean;
  };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        device: { type: 'string' },
        'device-fd': { type: 'string' },
        'iommufd-fd': { type: 'string' },
        config: { type: 'string' },
        rundir: { type: 'string' },
        'handover-fd': { type: 'string' },
        'close-inherited': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (err) {
    process.stderr.write(`devlease daemon: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (values['handover-fd'] !== undefined) {
    const fd = inheritedFd('handover-fd', values['handover-fd']);
    if (typeof fd === 'string') {
      process.stderr.write(`devlease daemon: ${fd}\n`);
      return 2;
    }
    closeInherited(values['close-inherited']);
    return takeOverCommand(fd, values);
  }
  if (!values.device === (values['device-fd'] === undefined)) {
    process.stderr.write(`devlease daemon: give --device or --device-fd (one of them)\n${USAGE}\n`);
    return 2;
  }
  // A spec neither form names is a usage error, as a missing --device is (openDevice would say so as a start failure).
  if (values.device && !/^(vfio-user|pci):./.test(values.device)) {
    process.stderr.write(
      `devlease daemon: --device must be vfio-user:PATH or pci:DDDD:BB:DD.F, got '${values.device}'\n${USAGE}\n`,
    );
    return 2;
  }
  // A descriptor number that is not one is a usage error too (it was a start failure, exit 1); whether it is open
  // is known only when it is taken (openFromArgs).
  for (const name of ['device-fd', 'iommufd-fd'] as const) {
    const problem = values[name] === undefined ? null : descriptorProblem(name, values[name]);
    if (problem) {
      process.stderr.write(`devlease daemon: ${problem}\n${USAGE}\n`);
      return 2;
    }
  }
  let config: BrokerConfig;
  try {
    config = values.config ? loadConfig(values.config) : defaultConfig();
    checkConfigFiles(config);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`devlease daemon: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  if (values.rundir) config.rundir = values.rundir;
  // From here on the daemon's lines go through its logger ([log] level and format, docs/OPERATIONS.md).
  const logger = createLogger(config.log);
  // Socket activation (contrib/systemd): sockets systemd made, by FileDescriptorName= (docs/OPERATIONS.md).
  let listening: ListenSocket[];
  try {
    listening = takeListenFds();
  } catch (err) {
    logger.error((err as Error).message);
    return 2;
  }
  const closeListening = () => {
    for (const l of listening) l.fd.close();
  };
  let device: Device;
  try {
    device = await openFromArgs(values);
  } catch (err) {
    closeListening();
    // Which device: the errors of a connect or an open (ENOENT, EACCES) do not say.
    logger.error(`${values.device ? `cannot open ${values.device}: ` : ''}${(err as Error).message}`);
    return 1;
  }
  let broker: Broker;
  try {
    broker = await Broker.start({
      config,
      device,
      ...(values.config
        ? { configSource: { path: values.config, overrides: values.rundir ? { rundir: values.rundir } : {} } }
        : {}),
      listening,
      auditSink: (line) => process.stdout.write(`${line}\n`),
      log: brokerLine(logger),
    });
  } catch (err) {
    closeListening();
    await device.close();
    logger.error((err as Error).message);
    return 1;
  }
  return serve(broker, device, logger, () =>
    process.stdout.write(
      `${JSON.stringify({ event: 'ready', sockets: Object.fromEntries(broker.sockets), dir: broker.dir, metrics: broker.metricsEndpoint })}\n`,
    ),
  );
}

/**
 * Run until a signal, a lost device, or an upgrade that handed everything over. `announce` says 'ready' once
 * the signal handlers are in place: a supervisor (or a test) that signals the moment it reads 'ready' must not
 * find SIGHUP's default action, which ends the process (it could: the write wakes the reader, which may run
 * before this process installs the handlers).
 */
function serve(
  broker: Broker,
  device: Device,
  logger: ReturnType<typeof createLogger>,
  announce: () => void,
): Promise<number> {
  // SIGUSR2: upgrade in place to the same entry point (devlease upgrade names another).
  const onUsr2 = () => void broker.upgrade().catch((err: Error) => logger.error(`upgrade: ${err.message}`));
  process.on('SIGUSR2', onUsr2);
  broker.on('handed-over', (pid: number) => {
    notifyMainPid(pid, logger);
    logger.info?.(`handed over to pid ${pid}; exiting`);
    // Exit without closing anything: the new broker holds every descriptor; closing here would reclaim.
    setImmediate(() => process.exit(0));
  });
  return new Promise<number>((resolve) => {
    const stop = async (code: number) => {
      process.off('SIGINT', onSig);
      process.off('SIGTERM', onSig);
      process.off('SIGHUP', onHup);
      process.off('SIGUSR2', onUsr2);
      await broker.close();
      await device.close();
      resolve(code);
    };
    const onSig = () => void stop(0);
    process.on('SIGINT', onSig);
    process.on('SIGTERM', onSig);
    // SIGHUP: reload the config and policy module; the broker logs and audits the outcome either way.
    const onHup = () => void broker.reload().catch(() => {});
    process.on('SIGHUP', onHup);
    // A vfio-user device that goes away is reconnected (the broker stays up); this is the other case.
    broker.on('device-lost', (why: string) => {
      logger.fatal(`the device is lost: ${why}; exiting`);
      void stop(1);
    });
    announce();
  });
}

/** The state versions a misbehaving new broker claims to read (DEVLEASE_TEST_UPGRADE_MISBEHAVE). */
const TEST_READERS: Record<string, number[]> = {
  'old-version': [0],
  'v2-reader': [1, 2],
  'v5-reader': [1, 2, 3, 4, 5],
};

/**
 * The new broker of an upgrade: say which state versions it reads, receive the state, rebuild and check, say
 * ready, then serve once the old broker commits (or is gone with the whole state sent). On abort, or if
 * anything fails before the commit, it exits without touching anything: the old broker carries on.
 *
 * DEVLEASE_TEST_UPGRADE_MISBEHAVE (tests only, docs/ARCHITECTURE.md): 'exit' exits once the state came,
 * 'refuse' refuses it, 'hang' never answers, 'hang-mid-call' never answers and leaves a device request's reply
 * unread, 'old-version' claims to read no version this broker writes, 'v2-reader' and 'v5-reader' read what
 * older brokers read.
 */
async function takeOverCommand(fd: Fd, values: { config?: string; rundir?: string }): Promise<number> {
  const misbehave = process.env['DEVLEASE_TEST_UPGRADE_MISBEHAVE'] ?? '';
  let config: BrokerConfig;
  try {
    config = values.config ? loadConfig(values.config) : defaultConfig();
    checkConfigFiles(config);
  } catch (err) {
    process.stderr.write(`devlease daemon: ${(err as Error).message}\n`);
    return 2;
  }
  if (values.rundir) config.rundir = values.rundir;
  const logger = createLogger(config.log);
  const wire = new HandoverWire(fd);
  wire.send({
    t: 'hello',
    // 'old-version': reads nothing this broker writes; 'v2-reader': reads what a broker before the stream
    // socket's read-ahead read (state versions 1 and 2), which must refuse this one's partials (format.ts);
    // 'v5-reader': a broker from before slice units carried a lost release count (versions 1 to 5).
    versions: TEST_READERS[misbehave] ?? READABLE_VERSIONS,
    pid: process.pid,
  });
  let received: { json: string; fds: Fd[] };
  try {
    received = await wire.receiveState(Date.now() + 60_000);
  } catch (err) {
    logger.error(`upgrade: nothing taken over: ${(err as Error).message}`);
    process.exit(1);
  }
  if (misbehave === 'exit') process.exit(3);
  if (misbehave === 'hang') await new Promise(() => {});
  const refuse = (reason: string): never => {
    logger.error(`upgrade: refusing the state: ${reason}`);
    wire.send({ t: 'refuse', reason });
    process.exit(1);
  };
  const doc = decodeState(received.json);
  const why = misbehave === 'refuse' ? 'refused by DEVLEASE_TEST_UPGRADE_MISBEHAVE=refuse' : refusal(doc);
  if (why) return refuse(why);
  const state = doc as BrokerState;
  let broker: Broker;
  let device: Device;
  try {
    device = await adoptDevice(state, received.fds);
    broker = await Broker.start({
      config,
      device,
      ...(values.config
        ? { configSource: { path: values.config, overrides: values.rundir ? { rundir: values.rundir } : {} } }
        : {}),
      handover: { state, fds: received.fds },
      auditSink: (line) => process.stdout.write(`${line}\n`),
      log: brokerLine(logger),
    });
  } catch (err) {
    return refuse((err as Error).message);
  }
  if (misbehave === 'hang-mid-call' && device instanceof VfioUserDevice) {
    // A device request whose reply this process never reads, then nothing: the old broker rolls back at its
    // deadline and finds the reply on the device connection.
    void device.client.deviceInfo().catch(() => {});
    device.client.socket.pause();
    await new Promise(() => {});
  }
  let d: Awaited<ReturnType<HandoverWire['next']>>;
  try {
    wire.send({ t: 'ready' });
    d = await wire.next(Date.now() + 120_000);
  } catch {
    d = 'gone'; // EPIPE: the old broker went away while this one rebuilt
  }
  if (typeof d !== 'string' && d.msg.t !== 'commit') {
    logger.info?.(`upgrade aborted by the old broker: ${String(d.msg['reason'])}`);
    process.exit(1);
  }
  if (d === 'timeout') process.exit(1);
  // 'commit', or the old broker gone with the whole state sent: everything is ours alone now.
  wire.close();
  if (d === 'gone')
    logger.warn(
      `upgrade: the old broker (pid ${state.broker.pid}) went away after the transfer; taking over`,
    );
  // A kernel device is this process's from here (its close() would unmap); its pinned pages' accounting moves.
  const pinned = device instanceof KernelDevice ? device.takeOver() : null;
  if (pinned) logger.info?.(`upgrade: pinned-page accounting ${pinned}`);
  broker.takeOver(d === 'gone');
  broker.audit.write({
    event: 'upgrade-took-over',
    from: state.broker.pid,
    upgrades: broker.upgrades,
    ...(pinned ? { pinnedAccounting: pinned } : {}),
  });
  notifyMainPid(process.pid, logger);
  return serve(broker, device, logger, () =>
    process.stdout.write(
      `${JSON.stringify({ event: 'ready', upgraded: true, sockets: Object.fromEntries(broker.sockets), dir: broker.dir })}\n`,
    ),
  );
}

/**
 * systemd: the new process becomes the service's main PID (needs NotifyAccess=all; docs/OPERATIONS.md). One
 * datagram, not `systemd-notify`: a child would inherit the fds this process was handed still queued behind a
 * held close (--close-inherited), close them as it execs and exits, and wait for their FLUSH, and we for it.
 */
function notifyMainPid(pid: number, logger: ReturnType<typeof createLogger>): void {
  const address = process.env['NOTIFY_SOCKET'];
  if (!address) return;
  try {
    native.sdNotify(address, Buffer.from(`MAINPID=${pid}\n`));
  } catch (e) {
    logger.warn(
      `upgrade: could not tell systemd the new main pid through NOTIFY_SOCKET=${address}: ${String(e)}`,
    );
  }
}
