// The host side of the vfio-user VM tests: QEMU 11.1 (scripts/qemu11/install.sh)
// boots the kernel rig's stock guest kernel with the `vfio-user` initramfs
// (scripts/kernel-rig/init.sh), a `vfio-user-pci` device attached to a
// vfio-user server socket, and a QMP socket for the test to drive the machine.
// The guest runs its commands (node on this project, or the static guest
// driver sa1-guest) from the host's root over 9p, as the kernel rig does,
// then waits for the host (it is not powered off).
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Qmp, withDeadline } from './qmp.js';

export const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

function script(path: string, ...args: string[]): string {
  const r = spawnSync('bash', [join(projectRoot, path), ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
    timeout: 30 * 60_000,
  });
  if (r.status !== 0) throw new Error(`${path} ${args.join(' ')} failed (status ${r.status ?? r.signal})`);
  return r.stdout;
}

let cachedQemu: string | undefined;
/** The QEMU 11 wrapper: $DEVLEASE_QEMU11, else installed (or found cached) now. */
export function qemu11(): string {
  cachedQemu ??= process.env.DEVLEASE_QEMU11 || script('scripts/qemu11/install.sh').trim();
  return cachedQemu;
}

let cachedImages: { kernel: string; initrd: string } | undefined;
/** The guest kernel and the vfio-user initramfs, built or found cached. */
export function guestImages(): { kernel: string; initrd: string } {
  if (!cachedImages) {
    const out = script('scripts/kernel-rig/build.sh', 'vfio-user');
    const get = (k: string): string => {
      const v = out.match(new RegExp(`^${k}=(.+)$`, 'm'))?.[1];
      if (!v) throw new Error(`scripts/kernel-rig/build.sh vfio-user printed no ${k}=:\n${out}`);
      return v;
    };
    cachedImages = { kernel: get('KERNEL'), initrd: get('INITRD') };
  }
  return cachedImages;
}

const quote = (s: string): string => `'${s.replaceAll("'", "'\\''")}'`;

/** One command of the guest's script: the host's node on a file of this project, or a static program. */
export type GuestCommand = { node: string[] } | { exec: string[] };

let cachedDriver: string | undefined;
/** sa1-guest, the static guest driver (test/vm/guest/sa1-guest), built or found cached. */
export function guestDriver(): string {
  cachedDriver ??= script('test/vm/guest/sa1-guest/build.sh').trim();
  return cachedDriver;
}

/** The script init.sh runs in the chroot of the host's root: the commands in order, whatever their status. */
function runScript(commands: GuestCommand[]): string {
  return [
    `cd ${quote(projectRoot)} || exit 126`,
    `export PATH=${quote(`${dirname(process.execPath)}:/usr/sbin:/usr/bin:/sbin:/bin`)} HOME=/root TMPDIR=/tmp NO_COLOR=1`,
    ...commands.map((c) => ('node' in c ? [process.execPath, ...c.node] : c.exec).map(quote).join(' ')),
    '',
  ].join('\n');
}

/**
 * The QEMU command line. Guest RAM is a shared memfd so that DMA_MAP carries
 * fds; an emulated Intel IOMMU (caching mode: QEMU sees every map the guest
 * makes) so that a guest driver's vfio-pci maps its buffers at IOVAs it
 * chooses, which QEMU forwards as DMA_MAP; the device behind a root port, so
 * that the guest can reset it alone (a secondary bus reset, which QEMU sends
 * as VFIO_USER_DEVICE_RESET); no -no-reboot, so a QMP system_reset reboots the
 * guest instead of ending QEMU; panic=0 keeps a panicking guest from
 * rebooting in a loop (waitLine fails at its panic line); no_timer_check, as
 * in the kernel rig: a TCG guest on a loaded host can fail the IO-APIC timer
 * check through interrupt remapping and panic.
 */
export function qemuArgs(o: {
  socket: string;
  qmp: string;
  runDir: string;
  memMiB?: number;
  /** false: plain guest RAM QEMU keeps to itself, so every DMA_MAP comes without an fd. */
  sharedRam?: boolean;
}): string[] {
  const { kernel, initrd } = guestImages();
  const mem = o.memMiB ?? 1024;
  const device = { driver: 'vfio-user-pci', bus: 'rp0', socket: { path: o.socket, type: 'unix' } };
  const shared = o.sharedRam ?? true;
  return [
    ...[
      '-machine',
      `q35,kernel-irqchip=split${shared ? ',memory-backend=mem' : ''}`,
      '-accel',
      'tcg',
      '-cpu',
      'max',
    ],
    ...['-smp', '1', '-m', `${mem}M`],
    ...(shared ? ['-object', `memory-backend-memfd,id=mem,size=${mem}M,share=on`] : []),
    ...['-device', 'intel-iommu,intremap=on,caching-mode=on'],
    ...['-device', 'pcie-root-port,id=rp0,chassis=1,slot=1'],
    ...['-device', JSON.stringify(device)],
    ...['-virtfs', 'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap'],
    ...['-nographic', '-nic', 'none', '-qmp', `unix:${o.qmp},server=on,wait=off`],
    ...['-kernel', kernel, '-initrd', initrd],
    ...['-append', `console=ttyS0 intel_iommu=on panic=0 quiet no_timer_check devlease_run=${o.runDir}`],
  ];
}

const PANIC = /Kernel panic - not syncing/;

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class Vm {
  readonly lines: string[] = [];
  readonly startedAt = Date.now();
  stderr = '';
  readonly exited: Promise<VmExit>;
  /** How QEMU ended, once it has (a SIGBUS on a revoked mapping differs from an exit on a closed socket). */
  exit: VmExit | undefined;
  qmp!: Qmp;
  #child: ChildProcess;
  #dir: string;
  #onLine: (() => void)[] = [];

  private constructor(child: ChildProcess, dir: string) {
    this.#child = child;
    this.#dir = dir;
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      this.stderr += d;
    });
    const rl = createInterface({ input: child.stdout!, crlfDelay: Number.POSITIVE_INFINITY });
    rl.on('line', (l) => {
      this.lines.push(l.replace(/\r$/, ''));
      for (const f of this.#onLine.splice(0)) f();
    });
    this.exited = new Promise((res) =>
      child.on('close', (code, signal) => {
        this.exit = { code, signal };
        res(this.exit);
      }),
    );
  }

  /** Boots a guest with vfio-user-pci on `socket` that runs `commands`. */
  static async boot(
    socket: string,
    commands: GuestCommand[],
    opts: { memMiB?: number; sharedRam?: boolean } = {},
  ): Promise<Vm> {
    const qemu = qemu11();
    const dir = mkdtempSync(join(tmpdir(), 'devlease-vm-'));
    writeFileSync(join(dir, 'project'), `${projectRoot}\n`);
    writeFileSync(join(dir, 'run.sh'), runScript(commands));
    const qmpPath = join(dir, 'qmp.sock');
    const child = spawn(qemu, qemuArgs({ socket, qmp: qmpPath, runDir: dir, ...opts }), {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const vm = new Vm(child, dir);
    try {
      // -qmp ... wait=off: the socket exists once QEMU has parsed its options.
      vm.qmp = await retry(() => Qmp.connect(qmpPath, 2000), 20_000, `QMP socket ${qmpPath}`, vm);
    } catch (err) {
      await vm.kill();
      throw err;
    }
    return vm;
  }

  get running(): boolean {
    return this.#child.exitCode === null && this.#child.signalCode === null;
  }

  /** The first console line at index >= from matching re, within ms. */
  async waitLine(re: RegExp, from: number, ms: number): Promise<{ index: number; match: RegExpMatchArray }> {
    const deadline = Date.now() + ms;
    let asked = Date.now();
    for (;;) {
      for (let i = from; i < this.lines.length; i++) {
        const match = (this.lines[i] as string).match(re);
        if (match) return { index: i, match };
        if (PANIC.test(this.lines[i] as string))
          throw new Error(`no console line ${re}: the guest kernel panicked\n${this.context()}`);
      }
      const left = deadline - Date.now();
      let why =
        left <= 0 ? `within ${ms} ms` : !this.running ? `before QEMU exited (${this.#exitText()})` : '';
      if (!why && Date.now() - asked >= 5000) {
        asked = Date.now();
        why = await this.#stopped();
      }
      if (why) throw new Error(`no console line ${re} ${why}\n${this.context()}`);
      // Woken by the next line, or every few seconds to ask QMP whether the VM still runs.
      const slice = Math.min(left, 5000);
      await withDeadline(new Promise<void>((r) => this.#onLine.push(r)), slice, 'console').catch(() => {});
    }
  }

  #exitText(): string {
    const e = this.exit ?? { code: this.#child.exitCode, signal: this.#child.signalCode };
    return e.signal ? `signal ${e.signal}` : `status ${e.code}`;
  }

  /** A reason to stop waiting when the VM no longer runs (QEMU stops it on a device ERR, say). */
  async #stopped(): Promise<string> {
    const status = await this.qmp.status().catch((err: Error) => `unknown (${err.message})`);
    return status === 'running' ? '' : `: the VM is not running (QMP status '${status}')`;
  }

  /** The last console lines and QEMU's stderr, for failure messages. */
  context(): string {
    return [
      ...this.lines.slice(-30).map((l) => `[console] ${l}`),
      `[qemu stderr] ${this.stderr.trim()}`,
    ].join('\n');
  }

  get pid(): number {
    return this.#child.pid ?? -1;
  }

  /** QMP quit; resolves with QEMU's exit. SIGKILL if it does not go in time. */
  async quit(ms = 20_000): Promise<VmExit> {
    await this.qmp.execute('quit').catch(() => {}); // the reply may race the close
    this.qmp.close();
    const exit = await withDeadline(this.exited, ms, 'QEMU exit after quit').catch(async (err) => {
      await this.kill();
      throw err;
    });
    rmSync(this.#dir, { recursive: true, force: true });
    return exit;
  }

  async kill(): Promise<void> {
    this.qmp?.close();
    if (this.running) this.#child.kill('SIGKILL');
    await this.exited;
    rmSync(this.#dir, { recursive: true, force: true });
  }
}

async function retry<T>(f: () => Promise<T>, ms: number, what: string, vm: Vm): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await f();
    } catch (err) {
      if (!vm.running || Date.now() > deadline)
        throw new Error(`${what}: ${(err as Error).message}\n${vm.context()}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}
