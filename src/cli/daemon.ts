// `devlease daemon --device vfio-user:PATH --config FILE`: the broker.

import { parseArgs } from 'node:util';
import { Broker } from '../broker/broker.js';
import { type BrokerConfig, ConfigError, defaultConfig, loadConfig } from '../broker/config.js';
import { openDevice } from '../device/open.js';

const USAGE = `usage: devlease daemon --device vfio-user:PATH [--config FILE] [--rundir DIR]
  --device   vfio-user:PATH (a vfio-user server, e.g. 'devlease sim'), or pci:DDDD:BB:DD.F (kernel VFIO)
  --config   broker configuration (TOML, see docs/CONFIG.md); defaults apply without one
  --rundir   overrides the config's rundir`;

export async function daemonCommand(argv: string[]): Promise<number> {
  let values: { device?: string; config?: string; rundir?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        device: { type: 'string' },
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
  if (!values.device) {
    process.stderr.write(`devlease daemon: --device is required\n${USAGE}\n`);
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
  const device = await openDevice(values.device);
  let broker: Broker;
  try {
    broker = await Broker.start({ config, device, auditSink: (line) => process.stdout.write(`${line}\n`) });
  } catch (err) {
    await device.close();
    process.stderr.write(`devlease daemon: ${(err as Error).message}\n`);
    return 1;
  }
  process.stdout.write(
    `${JSON.stringify({ event: 'ready', sockets: Object.fromEntries(broker.sockets), dir: broker.dir })}\n`,
  );
  return new Promise<number>((resolve) => {
    const stop = async (code: number) => {
      process.off('SIGINT', onSig);
      process.off('SIGTERM', onSig);
      await broker.close();
      await device.close();
      resolve(code);
    };
    const onSig = () => void stop(0);
    process.on('SIGINT', onSig);
    process.on('SIGTERM', onSig);
    broker.on('device-lost', () => void stop(1));
  });
}
