// Runs INSIDE a kernel-rig guest (npm run test:kernel), never on the host
// (scripts/run-tests.mjs leaves test/kernel/guest out of `npm test`).
// Checks what every real-kernel VFIO test builds on: QEMU's edu device is
// bound to vfio-pci behind the emulated IOMMU, and the VFIO device nodes of
// this configuration exist.
import assert from 'node:assert/strict';
import {
  closeSync,
  constants,
  existsSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { basename, join } from 'node:path';
import { test } from 'node:test';
import { ioctl } from '../../../src/sys/index.js';
import { VFIO_CHECK_EXTENSION, VFIO_GET_API_VERSION } from '../../../src/vfio/uapi/ioctl.js';
import { VFIO_API_VERSION } from '../../../src/vfio/uapi/vfio.js';
import { VFIO_TYPE1v2_IOMMU } from '../../../src/vfio/uapi/vfio-iommu.js';

const config = process.env.DEVLEASE_KERNEL_GUEST;
const pciDevices = '/sys/bus/pci/devices';

function eduAddress(): string {
  const found = readdirSync(pciDevices).filter((bdf) => {
    const id = (f: string) => readFileSync(join(pciDevices, bdf, f), 'utf8').trim();
    return id('vendor') === '0x1234' && id('device') === '0x11e8';
  });
  assert.equal(found.length, 1, `expected one edu device (1234:11e8), found ${found.length}`);
  return found[0]!;
}

function assertCharDevice(path: string, why: string): void {
  assert.ok(existsSync(path), `${path} missing: ${why}`);
  assert.ok(statSync(path).isCharacterDevice(), `${path} is not a character device`);
}

test('runs inside a kernel-rig guest', () => {
  assert.ok(
    config === 'legacy' || config === 'iommufd',
    `DEVLEASE_KERNEL_GUEST is '${config}': this file runs only inside the guest (npm run test:kernel)`,
  );
});

test('edu is bound to vfio-pci and sits in an IOMMU group', () => {
  const bdf = eduAddress();
  assert.equal(process.env.DEVLEASE_EDU_BDF, bdf, 'the init script reports the edu address it bound');
  assert.equal(basename(readlinkSync(join(pciDevices, bdf, 'driver'))), 'vfio-pci');
  const group = basename(readlinkSync(join(pciDevices, bdf, 'iommu_group')));
  assert.match(group, /^\d+$/);
});

test('the legacy VFIO container and the group node exist', () => {
  const group = basename(readlinkSync(join(pciDevices, eduAddress(), 'iommu_group')));
  assertCharDevice('/dev/vfio/vfio', 'no VFIO container (CONFIG_VFIO_CONTAINER)');
  assertCharDevice(`/dev/vfio/${group}`, `no node for edu's IOMMU group ${group}`);
});

test('the container answers VFIO_GET_API_VERSION and offers the type1v2 IOMMU', () => {
  assert.equal(VFIO_GET_API_VERSION, 0x3b64, "_IO(';', 100)");
  const fdsBefore = readdirSync('/proc/self/fd').length;
  const container = openSync('/dev/vfio/vfio', constants.O_RDWR);
  try {
    assert.equal(ioctl(container, VFIO_GET_API_VERSION, 0), VFIO_API_VERSION);
    assert.equal(ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU), 1);
  } finally {
    closeSync(container);
  }
  assert.equal(readdirSync('/proc/self/fd').length, fdsBefore, 'fd leak');
});

if (config === 'iommufd') {
  test('iommufd: /dev/iommu and the vfio cdev of edu exist', () => {
    assertCharDevice('/dev/iommu', 'kernel built without CONFIG_IOMMUFD');
    // Looked up by edu's address: ivshmem and virtio-net are bound to vfio-pci too, so the number (vfioN) depends
    // on binding order.
    const cdevs = readdirSync(join(pciDevices, eduAddress(), 'vfio-dev'));
    assert.equal(cdevs.length, 1, `edu has one vfio cdev: ${cdevs.join(', ')}`);
    assert.match(cdevs[0]!, /^vfio\d+$/);
    assertCharDevice(`/dev/vfio/devices/${cdevs[0]}`, 'kernel built without CONFIG_VFIO_DEVICE_CDEV');
  });
} else {
  test("legacy: Debian's stock kernel has no iommufd (why the iommufd guest exists)", () => {
    assert.equal(existsSync('/dev/iommu'), false);
    assert.equal(existsSync('/dev/vfio/devices'), false);
  });
}

test('/tmp is a writable tmpfs that takes files and unix sockets', async () => {
  assert.ok(
    readFileSync('/proc/mounts', 'utf8')
      .split('\n')
      .some((l) => l.split(' ')[1] === '/tmp' && l.split(' ')[2] === 'tmpfs'),
    '/tmp is not a tmpfs',
  );
  const file = join('/tmp', `smoke-${process.pid}`);
  writeFileSync(file, 'ok');
  assert.equal(readFileSync(file, 'utf8'), 'ok');
  rmSync(file);
  const sock = join('/tmp', `smoke-${process.pid}.sock`);
  const server = createServer();
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(sock, resolve));
  assert.ok(statSync(sock).isSocket());
  await new Promise((resolve) => server.close(resolve));
});
