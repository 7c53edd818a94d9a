// Kernel VFIO backend entry point. By PCI address, the cdev path is preferred
// (sysfs vfio-dev/vfioN -> /dev/vfio/devices/vfioN, bound to /dev/iommu, an
// IOAS of its own); when the kernel has no vfio cdev or no iommufd, or that
// path fails, the legacy group + type1v2 container is used. With fds passed
// in by a privileged launcher (--device-fd / --iommufd-fd), the device fd is a
// vfio cdev fd and is bound to the given (or a newly opened) iommufd.
// The chosen path and why are logged and kept in Device.path.

import type { Fd } from '../../sys/fd.js';
import { Type1Container } from './container.js';
import { KernelDevice } from './device.js';
import { IommufdIoas } from './iommufd.js';
import { codedError, explain, type KernelSys, realSys } from './sys.js';
import { checkVfioDriver, readPciSysfs } from './sysfs.js';

export interface KernelOpenOptions {
  /** PCI address, DDDD:BB:DD.F. */
  bdf?: string;
  /** A vfio cdev device fd opened by someone else; owned by the device from here on (closed on failure). */
  deviceFd?: Fd;
  /** An iommufd opened by someone else; owned from here on (closed on failure). */
  iommufdFd?: Fd;
  /** 'auto' (default): iommufd when possible, else the container. The others force a path. */
  path?: 'auto' | 'iommufd' | 'container';
  /** The syscall layer (tests record it). */
  sys?: KernelSys;
  /** Default '/sys' and '/dev' (tests point them at a scratch tree). */
  sysfsRoot?: string;
  devRoot?: string;
  log?: (msg: string) => void;
}

const defaultLog = (m: string) => process.stderr.write(`devlease kernel: ${m}\n`);

export async function openKernelDevice(opts: KernelOpenOptions): Promise<KernelDevice> {
  const log = opts.log ?? defaultLog;
  const dev = await (opts.deviceFd ? openPassedIn(opts, opts.deviceFd) : openByAddress(opts));
  log(`${dev.path.chosen} (${dev.path.reason})`);
  return dev;
}

async function openPassedIn(opts: KernelOpenOptions, device: Fd): Promise<KernelDevice> {
  const sys = opts.sys ?? realSys;
  const deviceName = `device fd ${device.fd} (passed in)`;
  let iommufd: Fd;
  let iommufdName: string;
  if (opts.iommufdFd) {
    iommufd = opts.iommufdFd;
    iommufdName = `iommufd ${iommufd.fd} (passed in)`;
  } else {
    iommufdName = `${opts.devRoot ?? '/dev'}/iommu`;
    try {
      iommufd = sys.open(iommufdName);
    } catch (err) {
      device.close();
      throw explain(err, `open ${iommufdName} for the passed-in device fd`, 'pass --iommufd-fd too');
    }
  }
  let domain: IommufdIoas;
  try {
    domain = IommufdIoas.attach(sys, { iommufd, iommufdName, device, deviceName });
  } catch (err) {
    device.close();
    throw err;
  }
  return KernelDevice.create({
    sys,
    fd: device,
    name: deviceName,
    domain,
    chosen: `kernel-iommufd: ${deviceName} bound to ${iommufdName}`,
    reason: opts.iommufdFd
      ? 'device and iommufd fds were passed in by a launcher'
      : 'a device fd was passed in by a launcher; this process opened the iommufd',
    ...(opts.log ? { log: opts.log } : {}),
  });
}

async function openByAddress(opts: KernelOpenOptions): Promise<KernelDevice> {
  if (!opts.bdf) {
    opts.iommufdFd?.close();
    throw codedError('EINVAL', 'a kernel device needs a PCI address or a device fd');
  }
  const sys = opts.sys ?? realSys;
  const devRoot = opts.devRoot ?? '/dev';
  const mode = opts.path ?? 'auto';
  let info: ReturnType<typeof readPciSysfs>;
  try {
    info = readPciSysfs(opts.bdf, opts.sysfsRoot);
    checkVfioDriver(info);
  } catch (err) {
    opts.iommufdFd?.close();
    throw err;
  }
  const logOpt = opts.log ? { log: opts.log } : {};

  let whyNotIommufd = 'the container path was asked for';
  if (mode !== 'container') {
    const tried = tryIommufd(sys, info.bdf, info.cdev, devRoot, opts.iommufdFd);
    if ('domain' in tried) {
      return KernelDevice.create({
        sys,
        fd: tried.device,
        name: tried.deviceName,
        domain: tried.domain,
        chosen: `kernel-iommufd: ${tried.deviceName} bound to ${tried.iommufdName}`,
        reason: 'iommufd + vfio cdev preferred: the kernel has both',
        ...logOpt,
      });
    }
    whyNotIommufd = tried.why;
    if (mode === 'iommufd')
      throw codedError(tried.code, `${info.bdf}: the iommufd path is unavailable: ${tried.why}`);
  } else {
    opts.iommufdFd?.close();
  }

  if ('missing' in info.group) {
    throw codedError(
      'ENODEV',
      `${info.bdf}: no iommufd path (${whyNotIommufd}) and no container path (${info.group.missing})`,
    );
  }
  const groupPath = `${devRoot}/vfio/${info.group.id}`;
  let opened: ReturnType<typeof Type1Container.open>;
  try {
    opened = Type1Container.open(sys, { group: groupPath, container: `${devRoot}/vfio/vfio`, bdf: info.bdf });
  } catch (err) {
    const e = err as Error;
    e.message = `${info.bdf}: no iommufd path (${whyNotIommufd}); container path: ${e.message}`;
    throw e;
  }
  return KernelDevice.create({
    sys,
    fd: opened.device,
    name: `${info.bdf} (from ${groupPath})`,
    domain: opened.domain,
    chosen: `kernel-container: group ${groupPath} in a type1v2 container (${devRoot}/vfio/vfio)`,
    reason: mode === 'container' ? whyNotIommufd : `fell back to the legacy container: ${whyNotIommufd}`,
    ...logOpt,
  });
}

type IommufdAttempt =
  | { domain: IommufdIoas; device: Fd; deviceName: string; iommufdName: string }
  | { why: string; code: string };

/** Open the cdev and the iommufd and attach; on any failure everything opened here is closed, and why is said. */
function tryIommufd(
  sys: KernelSys,
  bdf: string,
  cdev: { name: string } | { missing: string },
  devRoot: string,
  passedIommufd: Fd | undefined,
): IommufdAttempt {
  const code = (err: unknown) => (err as { code?: string }).code ?? 'EIO';
  if ('missing' in cdev) {
    passedIommufd?.close();
    return { why: cdev.missing, code: 'ENODEV' };
  }
  const deviceName = `${devRoot}/vfio/devices/${cdev.name}`;
  let device: Fd;
  try {
    device = sys.open(deviceName);
  } catch (err) {
    passedIommufd?.close();
    return { why: `cannot open ${deviceName}: ${code(err)}`, code: code(err) };
  }
  const iommufdName = passedIommufd ? `iommufd ${passedIommufd.fd} (passed in)` : `${devRoot}/iommu`;
  let iommufd: Fd;
  try {
    iommufd = passedIommufd ?? sys.open(iommufdName);
  } catch (err) {
    device.close();
    const why =
      code(err) === 'ENOENT'
        ? `${iommufdName} does not exist (kernel without CONFIG_IOMMUFD)`
        : `cannot open ${iommufdName}: ${code(err)}`;
    return { why, code: code(err) };
  }
  try {
    const domain = IommufdIoas.attach(sys, { iommufd, iommufdName, device, deviceName });
    return { domain, device, deviceName, iommufdName };
  } catch (err) {
    // The cdev fd may be bound by now; closing it unbinds, so the group path can open the device.
    device.close();
    return { why: `${bdf}: ${(err as Error).message}`, code: code(err) };
  }
}
