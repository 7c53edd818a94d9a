#!/usr/bin/env node
// Boots one kernel-rig guest (QEMU TCG, emulated Intel IOMMU, QEMU's edu
// device bound to vfio-pci) and runs `node <args>` inside it, in this
// project's folder, on the host's node seen through a read-only 9p share.
//
//   node test/kernel/run-guest.mjs [--config legacy|iommufd] [--timeout SEC]
//        [--boot-timeout SEC] [--dmesg FILE] [--env K=V]... [--verbose] [--no-build] -- <node args...>
//
// The guest's output is streamed to stdout as it comes; the exit status is the
// guest script's. 124: timed out; 125: the rig itself failed (QEMU, boot,
// binding edu, mounting the host): the boot log is printed to say why.
// Guest env: DEVLEASE_KERNEL_GUEST=<config>, DEVLEASE_EDU_BDF=<pci address>,
// DEVLEASE_IVSHMEM_BDF, DEVLEASE_AER_BDF (a virtio-net with AER behind a PCIe root port).
//
// A guest test asks the host for an AER error on that device by writing the line
// `=== DEVLEASE-HOST aer-inject NAME ===` to /dev/console (aerInject() in
// test/kernel/guest/fixtures/aer.ts): the host sends QEMU's monitor
// `pcie_aer_inject_error aerdev NAME` and prints the monitor's answer
// among the guest's output as `[host] aer-inject NAME: <answer>`. The same way,
// `=== DEVLEASE-HOST set-link on|off ===` sends `set_link aerdev on|off` (setLink()).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { hmp } from './hmp.mjs';

export const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const configs = ['legacy', 'iommufd'];
const rigCache = join(process.env.DEVLEASE_CACHE ?? join(homedir(), '.cache/devlease'), 'kernel-rig');

// Markers printed by scripts/kernel-rig/init.sh.
const BEGIN = '=== DEVLEASE-GUEST-BEGIN ===';
const END = /^=== DEVLEASE-GUEST-END status=(\d+) ===$/;
const DMESG_BEGIN = '=== DEVLEASE-DMESG-BEGIN ===';
const DMESG_END = '=== DEVLEASE-DMESG-END ===';
const RIG_ERROR = /^=== DEVLEASE-RIG-ERROR (.*) ===$/;
// Anywhere in a line: the console is shared, so another writer's partial line may come first.
// aer-inject NAME: QEMU's pcie_aer_inject_error on the AER device; set-link on|off: its link, which a virtio-net
// with DRIVER_OK reports with a config interrupt (its MSI-X config vector).
const HOST_REQUEST = /=== DEVLEASE-HOST (aer-inject [A-Z_]+|set-link (?:on|off)) ===/;
const HOST_COMMANDS = {
  'aer-inject': (arg) => `pcie_aer_inject_error aerdev ${arg}`,
  'set-link': (arg) => `set_link aerdev ${arg}`,
};

/** Builds (or finds cached) one configuration; returns { kernel, initrd }. */
export function buildConfig(config) {
  const r = spawnSync('bash', [join(projectRoot, 'scripts/kernel-rig/build.sh'), config], {
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`scripts/kernel-rig/build.sh ${config} failed (status ${r.status})`);
  return parseEnv(r.stdout, config);
}

function cachedConfig(config) {
  const file = join(rigCache, `${config}.env`);
  if (!existsSync(file)) throw new Error(`${file} missing: run scripts/kernel-rig/build.sh ${config} first`);
  return parseEnv(readFileSync(file, 'utf8'), config);
}

function parseEnv(text, config) {
  const get = (k) => text.match(new RegExp(`^${k}=(.+)$`, 'm'))?.[1];
  const kernel = get('KERNEL');
  const initrd = get('INITRD');
  if (!kernel || !initrd || !existsSync(kernel) || !existsSync(initrd)) {
    throw new Error(`kernel-rig ${config}: build output names no existing KERNEL/INITRD:\n${text}`);
  }
  return { kernel, initrd };
}

const shellQuote = (s) => `'${String(s).replaceAll("'", "'\\''")}'`;

/** The script the guest runs inside the chroot (the host's /bin/sh). */
function guestScript(nodeArgs, env) {
  const nodeBin = process.execPath;
  const vars = {
    PATH: `${dirname(nodeBin)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
    HOME: '/root',
    TMPDIR: '/tmp',
    TERM: 'dumb',
    NO_COLOR: '1',
    ...env,
  };
  return [
    `cd ${shellQuote(projectRoot)} || exit 126`,
    ...Object.entries(vars).map(([k, v]) => `export ${k}=${shellQuote(v)}`),
    `exec ${[nodeBin, ...nodeArgs].map(shellQuote).join(' ')}`,
    '',
  ].join('\n');
}

// The QEMU line of shared/notes/real-kernel-tests.md: TCG (KVM does not work
// on these machines), an emulated Intel IOMMU, edu, the host root over 9p.
const QEMU_FIXED = [
  '-machine q35,kernel-irqchip=split -accel tcg -cpu max -m 2G -smp 2',
  '-device intel-iommu,intremap=on,caching-mode=on -device edu',
  '-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
  '-nographic -no-reboot -nic none',
  // The serial console on stdio through a mux: its Ctrl-A b sends the guest a break (SysRq: askWhereStuck).
  '-chardev stdio,id=console,mux=on,signal=off -serial chardev:console',
]
  .join(' ')
  .split(' ');

/**
 * The ivshmem-plain device's memory: 1 MiB of a host file (memory-backend-file, share=on), so a test can read
 * what guest clients wrote into BAR2 from the file. It lives in the rig cache (the guest sees the host's root
 * read-only over 9p, but not the host's /tmp) and is zeroed before each boot.
 */
export const IVSHMEM_SIZE = 1 << 20;
export const ivshmemFile = (config) => join(rigCache, `ivshmem-${config}.bin`);

/**
 * A PCIe device with an AER capability (edu and ivshmem are plain PCI) behind a PCIe root port, so that QEMU can
 * report an AER error through the port: the guest's AER driver hands it to vfio-pci, which signals the device's
 * ERR irq. The guest binds it to vfio-pci (DEVLEASE_AER_BDF). A virtio-net, because QEMU lets a driver set its
 * error reporting bits (x-pcie-deverr-init; igb's, say, stay clear, so its errors are never reported) and it has
 * FLR; nothing in the guest drives it as a network device.
 */
const AER_DEVICE = [
  '-device',
  'pcie-root-port,id=rp0,chassis=1',
  '-device',
  'virtio-net-pci,bus=rp0,id=aerdev,aer=on,disable-legacy=on',
];

function qemuArgs({ kernel, initrd }, runDir, config) {
  // no_timer_check: under TCG on a loaded host the guest's IO-APIC timer check
  // can miss its ticks and panic ("timer doesn't work through Interrupt-remapped
  // IO-APIC"), seen in 3 of 4 boots with other work on both cores.
  const append = `console=ttyS0 intel_iommu=on panic=-1 quiet no_timer_check devlease_run=${runDir}`;
  const ivshmem = [
    '-object',
    `memory-backend-file,id=ivshm,mem-path=${ivshmemFile(config)},size=${IVSHMEM_SIZE},share=on`,
    '-device',
    'ivshmem-plain,memdev=ivshm',
  ];
  const monitor = ['-monitor', `unix:${monitorPath(runDir)},server=on,wait=off`];
  const args = [...QEMU_FIXED, ...ivshmem, ...AER_DEVICE, ...monitor, '-kernel', kernel, '-initrd', initrd];
  args.push('-append', append);
  // qboot starts a second or two faster than SeaBIOS.
  if (existsSync('/usr/share/qemu/qboot.rom')) args.push('-bios', '/usr/share/qemu/qboot.rom');
  return args;
}

const monitorPath = (runDir) => join(runDir, 'monitor.sock');

/** A guest's request of the host (HOST_REQUEST): sent to QEMU's monitor; its answer is reported with the guest's output. */
async function hostRequest(runDir, request, report) {
  const [kind, arg] = request.split(' ');
  let answer;
  try {
    answer = (await hmp(monitorPath(runDir), HOST_COMMANDS[kind](arg))) || 'ok';
  } catch (err) {
    answer = `failed: ${err.message}`;
  }
  report(`[host] ${request}: ${answer.replace(/\s+/g, ' ')}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** How long a guest may print nothing after an AER injection before it is taken for stuck (its tests: < 60 s). */
const AER_SILENCE_MS = Number(process.env.DEVLEASE_AER_SILENCE_SEC ?? 180) * 1000;

/**
 * At a timeout with the guest's tests running: whether QEMU's monitor still answers (a stuck QEMU, or a stuck
 * guest), then SysRq over the serial line (a break: the stdio mux's Ctrl-A b, then the key): console log level 8,
 * the tasks blocked in D state with their stacks, every CPU's backtrace. Lines the guest prints meanwhile reach
 * `report` through the usual path; this waits for them ~10 s.
 */
async function askWhereStuck(child, runDir, report, guestLines) {
  let status;
  let answered = true;
  try {
    status = (await hmp(monitorPath(runDir), 'info status', 5_000)) || '(nothing)';
  } catch (err) {
    status = `no answer (${err.message})`;
    answered = false;
  }
  report(`[host] timed out: QEMU's monitor, asked 'info status': ${status.replace(/\s+/g, ' ')}`);
  if (answered) {
    // Where each vCPU is: halted (HLT=1: the guest waits for an interrupt that does not come) or running, and at
    // which kernel address (the guest's System.map names it).
    try {
      const regs = await hmp(monitorPath(runDir), 'info registers -a', 5_000);
      const where = regs.split('\n').filter((l) => /^CPU#|RIP=/.test(l.trim()));
      report(`[host] vCPUs: ${where.map((l) => l.trim().replace(/\s+/g, ' ')).join(' | ')}`);
    } catch (err) {
      report(`[host] vCPUs: no answer (${err.message})`);
    }
  }
  report('[host] asking the guest by SysRq: 8 (log level), w (blocked tasks), l (CPU backtraces)');
  const before = guestLines();
  for (const key of ['8', 'w', 'l']) {
    if (!child.stdin.writable) break;
    child.stdin.write(`\x01b${key}`);
    await sleep(3_000);
  }
  await sleep(2_000);
  const sysrqAnswered = guestLines() > before;
  if (!sysrqAnswered)
    report('[host] the guest printed nothing for SysRq: its kernel (or its console) is stuck');
  return { monitorAnswered: answered, sysrqAnswered };
}

/**
 * Boots `config`, runs `node ...nodeArgs` in the guest, resolves with
 * { status, output, dmesg, seconds, error? } once QEMU has exited.
 * Guest output lines are passed to `onLine` as they arrive.
 */
export async function runGuest({
  config = 'legacy',
  nodeArgs,
  env = {},
  timeoutSec = 300,
  bootTimeoutSec = 120,
  build = true,
  verbose = false,
  onLine = (l) => process.stdout.write(`${l}\n`),
}) {
  if (!configs.includes(config)) throw new Error(`unknown config '${config}' (one of ${configs.join(', ')})`);
  const paths = build ? buildConfig(config) : cachedConfig(config);
  const runDir = mkdtempSync(join(tmpdir(), 'devlease-guest-'));
  if (!/^[\w./-]+$/.test(runDir))
    throw new Error(`temp folder ${runDir} has characters unsafe on a kernel command line`);
  const started = Date.now();
  try {
    writeFileSync(join(runDir, 'project'), `${projectRoot}\n`);
    writeFileSync(
      join(runDir, 'run.sh'),
      guestScript(nodeArgs, { DEVLEASE_IVSHMEM_FILE: ivshmemFile(config), ...env }),
    );
    writeFileSync(ivshmemFile(config), Buffer.alloc(IVSHMEM_SIZE));
    const qemu = process.env.DEVLEASE_QEMU ?? 'qemu-system-x86_64';
    // stdin stays an open pipe nobody writes: QEMU's stdio console wants one.
    const child = spawn(qemu, qemuArgs(paths, runDir, config), { stdio: ['pipe', 'pipe', 'pipe'] });
    const stop = () => child.kill('SIGKILL');
    // A write to QEMU's stdin (askWhereStuck) after it died fails EPIPE: nothing to report.
    child.stdin.on('error', () => {});
    // QEMU must not outlive this process, however it ends.
    const onSignal = (sig) => {
      stop();
      rmSync(runDir, { recursive: true, force: true });
      process.exit(128 + (sig === 'SIGINT' ? 2 : 15));
    };
    process.once('exit', stop);
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);

    let phase = 'boot';
    let status = null;
    // Guest lines seen (SysRq's answer is counted by them), the last one's time, and the last AER injection's.
    let guestLines = 0;
    let lastLineAt = 0;
    let aerInjectedAt = 0;
    let silentAfterAer = false;
    let rigError = null;
    let timedOut = null;
    let stuck = null;
    const boot = [];
    const output = [];
    const dmesg = [];
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d) => {
      stderr += d;
    });
    child.on('error', (err) => {
      stderr += `cannot run ${qemu}: ${err.message} (scripts/kernel-rig/deps.sh installs QEMU)`;
    });
    let asking = false;
    const giveUp = async (why) => {
      if (asking) return;
      asking = true;
      timedOut = why;
      // A guest that hangs says where before it is killed (its output, with the others').
      try {
        if (phase === 'guest')
          stuck = await askWhereStuck(
            child,
            runDir,
            (l) => {
              output.push(l);
              onLine(l);
            },
            () => guestLines,
          );
      } finally {
        stop();
      }
    };
    const timer = setTimeout(() => void giveUp(`after ${timeoutSec} s`), timeoutSec * 1000);
    // A guest silent for AER_SILENCE_MS after the host injected an AER error stopped there (each test after an
    // injection ends within a minute, with a line): seen twice in CI, once per guest kernel, never reproduced in
    // dozens of loops (docs/KERNEL-TESTS.md). Asked where it is now rather than at the run's timeout.
    const silence = setInterval(() => {
      if (phase === 'guest' && aerInjectedAt > lastLineAt && Date.now() - aerInjectedAt > AER_SILENCE_MS) {
        clearInterval(silence);
        silentAfterAer = true;
        void giveUp(`silent ${AER_SILENCE_MS / 1000} s after an AER injection`);
      }
    }, 5_000);
    // Booting takes 5-15 s; a guest that has not started the script after
    // bootTimeoutSec is stuck, however long the script itself may take.
    const bootTimer = setTimeout(() => {
      timedOut = `while booting (${bootTimeoutSec} s)`;
      stop();
    }, bootTimeoutSec * 1000);

    const lines = createInterface({ input: child.stdout, crlfDelay: Number.POSITIVE_INFINITY });
    lines.on('line', (raw) => {
      const line = raw.replace(/\r$/, '');
      if (phase === 'boot') {
        if (line === BEGIN) {
          phase = 'guest';
          clearTimeout(bootTimer);
        } else if (RIG_ERROR.test(line)) rigError = line.match(RIG_ERROR)[1];
        else {
          boot.push(line);
          if (verbose) process.stderr.write(`[guest boot] ${line}\n`);
        }
      } else if (phase === 'guest') {
        const m = line.match(END);
        if (m) {
          status = Number(m[1]);
          phase = 'after';
        } else {
          guestLines++;
          const request = line.match(HOST_REQUEST);
          if (request?.[1].startsWith('aer-inject')) aerInjectedAt = Date.now();
          else lastLineAt = Date.now();
          if (request)
            void hostRequest(runDir, request[1], (l) => {
              output.push(l);
              onLine(l);
            });
          output.push(line);
          onLine(line);
        }
      } else if (phase === 'after' && line === DMESG_BEGIN) phase = 'dmesg';
      else if (phase === 'dmesg') {
        if (line === DMESG_END) phase = 'done';
        else dmesg.push(line);
      }
    });
    const exit = await new Promise((res) => child.on('close', (code, signal) => res({ code, signal })));
    clearTimeout(timer);
    clearInterval(silence);
    clearTimeout(bootTimer);
    process.removeListener('exit', stop);
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    const seconds = (Date.now() - started) / 1000;
    const result = { status, output, dmesg, seconds, boot };
    // Once the script's status is in, a guest slow to power off changes nothing.
    if (status !== null) return result;
    const why = timedOut
      ? `timed out ${timedOut} (phase '${phase}')`
      : rigError
        ? `rig error: ${rigError}`
        : `QEMU exited (${exit.signal ?? exit.code}) before the guest script finished (phase '${phase}')`;
    const context = [
      ...(verbose ? [] : boot.slice(-40).map((l) => `[guest boot] ${l}`)),
      ...(stderr ? [`[qemu stderr] ${stderr.trim()}`] : []),
    ].join('\n');
    // neverStarted: the guest's kernel did not get as far as the test script (a boot that hung: TCG under load).
    return {
      ...result,
      status: timedOut ? 124 : 125,
      error: `kernel-rig ${config}: ${why}\n${context}`,
      neverStarted: phase === 'boot',
      // qemuStuck: at the timeout QEMU's own monitor did not answer: QEMU hung (its main loop), not the guest.
      qemuStuck: stuck !== null && !stuck.monitorAnswered,
      // guestWedged: silent after an AER injection, QEMU answering, and nothing printed for SysRq: the guest's
      // kernel stopped (not a devlease process blocked in it: SysRq would list that one with its stack).
      guestWedged: silentAfterAer && stuck?.monitorAnswered && !stuck.sysrqAnswered,
    };
  } finally {
    rmSync(runDir, { recursive: true, force: true });
  }
}

/** Kernel log lines that report an IOMMU (DMAR) fault: one "DMAR: [DMA Write ...] ... fault addr" per fault. */
export const dmarFaults = (dmesg) => dmesg.filter((l) => /DMAR: \[(DMA|INTR)/.test(l));

function parseCli(argv) {
  const opts = {
    config: 'legacy',
    env: {},
    timeoutSec: 300,
    bootTimeoutSec: 120,
    build: true,
    verbose: false,
    dmesgFile: null,
  };
  let i = 0;
  for (; i < argv.length && argv[i] !== '--'; i++) {
    const a = argv[i];
    if (a === '--config') opts.config = argv[++i];
    else if (a === '--timeout') opts.timeoutSec = Number(argv[++i]);
    else if (a === '--boot-timeout') opts.bootTimeoutSec = Number(argv[++i]);
    else if (a === '--dmesg') opts.dmesgFile = argv[++i];
    else if (a === '--env') {
      const [k, ...v] = argv[++i].split('=');
      opts.env[k] = v.join('=');
    } else if (a === '--verbose') opts.verbose = true;
    else if (a === '--no-build') opts.build = false;
    else throw new Error(`unknown option ${a}`);
  }
  opts.nodeArgs = argv.slice(i + 1);
  if (opts.nodeArgs.length === 0) throw new Error('nothing to run: give the node arguments after --');
  return opts;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  let opts;
  try {
    opts = parseCli(process.argv.slice(2));
  } catch (err) {
    console.error(`run-guest: ${err.message}`);
    console.error(
      'usage: run-guest.mjs [--config legacy|iommufd] [--timeout SEC] [--dmesg FILE] [--env K=V] -- <node args>',
    );
    process.exit(2);
  }
  const r = await runGuest(opts);
  if (opts.dmesgFile) writeFileSync(opts.dmesgFile, `${r.dmesg.join('\n')}\n`);
  const faults = dmarFaults(r.dmesg);
  if (faults.length)
    console.error(
      `run-guest: ${faults.length} DMAR fault line(s) in the guest's dmesg:\n${faults.join('\n')}`,
    );
  if (r.error) console.error(r.error);
  console.error(`run-guest: ${opts.config} finished in ${r.seconds.toFixed(1)} s, status ${r.status}`);
  process.exit(r.status);
}
