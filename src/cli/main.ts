// devlease command line: dispatches to sub-commands.
import { VERSION } from '../version.js';

const HELP = `devlease ${VERSION} — lease slices of a VFIO device to client processes

usage: devlease <command> [options]
  sim       run the SA-1 simulated accelerator (a vfio-user server)
  daemon    run the broker for a device
  demo      simulator + broker + clients, with a live view (the main job)
  status | leases | clients | revoke <id> | drain | reset | reload | upgrade   talk to a running broker
  top       live view of a running broker (leases, rates, device health, events)
  bench     run the benchmarks
  --version`;

export async function main(argv: string[]): Promise<void> {
  const [cmd, ...rest] = argv;
  let code = 0;
  switch (cmd) {
    case '--version':
    case '-v':
    case 'version':
      process.stdout.write(`devlease ${VERSION}\n`);
      break;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(`${HELP}\n`);
      break;
    default:
      // Every command needs the native addon, which loads on Linux only (src/sys/native.ts): said here in one
      // line, rather than as that load's error with its stack from bin/devlease.js's last-resort handler.
      if (process.platform !== 'linux') {
        process.stderr.write(
          `devlease: runs on Linux only (it needs AF_UNIX SCM_RIGHTS, pidfd, memfd and VFIO); this is ${process.platform}\n`,
        );
        code = 1;
      } else code = await command(cmd, rest);
  }
  process.exitCode = code;
}

async function command(cmd: string, rest: string[]): Promise<number> {
  // Started by the demo (or another devlease process) to end with it: watch that parent (a no-op otherwise).
  // Imported here, on Linux only: it loads the native addon.
  (await import('../util/exit-with-parent.js')).exitWithParent();
  let code: number;
  switch (cmd) {
    case 'sim':
      code = await (await import('./sim.js')).simCommand(rest);
      break;
    case 'daemon':
      code = await (await import('./daemon.js')).daemonCommand(rest);
      break;
    case 'demo':
      code = await (await import('./demo.js')).demoCommand(rest);
      break;
    case 'top':
      code = await (await import('./top.js')).topCommand(rest);
      break;
    case 'bench':
      code = await (await import('../../bench/run.js')).benchCommand(rest);
      break;
    case 'status':
    case 'leases':
    case 'clients':
    case 'revoke':
    case 'drain':
    case 'reset':
    case 'reload':
    case 'upgrade':
      code = await (await import('./admin.js')).adminCommand(cmd, rest);
      break;
    default:
      process.stderr.write(`devlease: unknown command '${cmd}'\n${HELP}\n`);
      code = 2;
  }
  return code;
}
