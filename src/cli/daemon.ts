// `devlease daemon --device vfio-user:PATH --config FILE`: the broker.

import { parseArgs } from 'node:util';
import { Broker } from '../broker/broker.js';
import { type BrokerConfig, ConfigError, defaultConfig, loadConfig } from '../broker/config.js';
import type { Device } from '../device/device.js';
import { openDevice } from '../device/open.js';
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
  --rundir      overrides the config's rundir`;

/** An inherited descriptor number from the command line, or an error message. */
function inheritedFd(name: string, value: string): Fd | string {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 3)
    return `--${name} must be an inherited descriptor number >= 3, got '${value}'`;
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
  if (!values.device === (values['device-fd'] === undefined)) {
    process.stderr.write(`devlease daemon: give --device or --device-fd (one of them)\n${USAGE}\n`);
    return 2;
  }
  let config: BrokerConfig;
  try {
    config = values.config ? loadConfig(values.config) : defaultConfig();
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
    logger.error((err as Error).message);
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
  process.stdout.write(
    `${JSON.stringify({ event: 'ready', sockets: Object.fromEntries(broker.sockets), dir: broker.dir, metrics: broker.metricsEndpoint })}\n`,
  );
  return new Promise<number>((resolve) => {
    const stop = async (code: number) => {
      process.off('SIGINT', onSig);
      process.off('SIGTERM', onSig);
      process.off('SIGHUP', onHup);
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
  });
}
