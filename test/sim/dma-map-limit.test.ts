// The simulator's max_dma_maps (src/sim/host/dma-limit.ts): a vfio-user client (QEMU, libvfio-user, the broker)
// trusts the number VERSION advertises. Every map is a guarded mmap, and the process's SIGBUS guard table holds
// 4096: advertising the spec's 65535 had a client refused at its 3,969th map with EINVAL ("too many guarded
// mappings in this process"). Now every map up to the advertised number is held, and the next is ENOSPC naming
// the limit, with nothing of it left behind.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import {
  DEFAULT_OPTIONS,
  dmaMapRoom,
  SIM_GUARD_RESERVE,
  spawnSimulator,
  startSimulator,
} from '../../src/sim/index.js';
import { encodeDmaBufRequest } from '../../src/sim/model/slices.js';
import { MemFd } from '../../src/sys/index.js';
import { native } from '../../src/sys/native.js';
import {
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_PCI_BAR4_REGION_INDEX,
  vfio_device_feature_dma_buf_revoke,
} from '../../src/vfio/uapi/vfio.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { VFIO_DMA_UNMAP_FLAG_ALL } from '../../src/vfio/user/protocol.js';
import { openFdCount, trackFdLeaks } from '../helpers/fds.js';
import { mappingsOf, rig } from './helpers/real.js';

after(trackFdLeaks());

const PAGE = 4096n;
const BIN = new URL('../../../bin/devlease.js', import.meta.url).pathname;

/**
 * Map page i of `memfd` at its own IOVA, two pages apart, so no two maps are IOVA neighbours: each is a mapping
 * of its own in the device (as distinct small buffers a driver maps are).
 */
function mapPage(client: VfioUserClient, memfd: MemFd, i: number): Promise<void> {
  const n = BigInt(i);
  return client.dmaMap({
    fd: memfd.fd,
    offset: n * PAGE,
    iova: 0x1000_0000n + 2n * n * PAGE,
    size: PAGE,
    flags: 3,
  });
}

/** The refusal of map `i` (it must be refused). */
async function refusal(
  client: VfioUserClient,
  memfd: MemFd,
  i: number,
): Promise<Error & { code?: string; errno?: number }> {
  return mapPage(client, memfd, i).then(
    () => assert.fail(`map ${i + 1} was accepted past the advertised max_dma_maps`),
    (err: Error) => err,
  );
}

const unmapAll = (client: VfioUserClient) =>
  client.dmaUnmap({ iova: 0n, size: 0n, flags: VFIO_DMA_UNMAP_FLAG_ALL });

test('maxDmaMaps is advertised and held: the map past it is ENOSPC naming the limit, an unmap makes room, nothing leaks', async () => {
  const fdsBefore = openFdCount();
  const slotsBefore = native.guardSlots().inUse;
  const limit = 16;
  const r = await rig({ maxDmaMaps: limit });
  const name = `sa1-test-limit-${process.pid}`;
  const memfd = MemFd.create(name, { size: Number(PAGE) * (limit + 1) });
  try {
    assert.equal(r.sim.maxDmaMaps, limit);
    assert.equal(r.client.serverCapabilities.maxDmaMaps, limit, 'VERSION advertises the configured limit');
    const slotsIdle = native.guardSlots().inUse; // the device's queue pages and granules
    for (let i = 0; i < limit; i++) await mapPage(r.client, memfd, i);
    const err = await refusal(r.client, memfd, limit);
    assert.equal(err.code, 'ENOSPC');
    assert.equal(err.errno, 28);
    assert.match(err.message, /at most 16 maps \(the max_dma_maps it advertised\)/);
    // The refused map took nothing: neither a mapping, nor a guard slot, nor a place in the device's table.
    assert.equal(mappingsOf(name), limit);
    assert.equal(native.guardSlots().inUse, slotsIdle + limit);
    assert.equal((await r.sim.stats()).dmaMaps, limit);
    // The limit counts maps held, not maps ever made.
    await r.client.dmaUnmap({ iova: 0x1000_0000n, size: PAGE });
    await mapPage(r.client, memfd, limit);
    assert.equal((await refusal(r.client, memfd, 0)).code, 'ENOSPC');
    await unmapAll(r.client);
    assert.equal(mappingsOf(name), 0, 'once DMA_UNMAP is answered the device maps none of it');
    assert.equal(native.guardSlots().inUse, slotsIdle, 'every map gave its guard slot back');
    assert.equal((await r.sim.stats()).dmaMaps, 0);
  } finally {
    memfd.close();
    await r.close();
  }
  assert.equal(native.guardSlots().inUse, slotsBefore, 'the closed simulator holds no guard slot');
  assert.equal(openFdCount(), fdsBefore, 'every fd opened for the test was closed');
});

test('with the default options every map up to the advertised max_dma_maps is held (the guard table has room)', async () => {
  const fdsBefore = openFdCount();
  const { capacity } = native.guardSlots();
  const r = await rig({ ...DEFAULT_OPTIONS });
  const advertised = r.client.serverCapabilities.maxDmaMaps;
  const name = `sa1-test-room-${process.pid}`;
  const memfd = MemFd.create(name, { size: Number(PAGE) * (advertised + 1) });
  const slotsIdle = native.guardSlots().inUse;
  try {
    for (let i = 0; i < advertised; i++) {
      await mapPage(r.client, memfd, i).catch((err: Error) =>
        assert.fail(`map ${i + 1} of the ${advertised} advertised was refused: ${err.message}`),
      );
    }
    assert.equal(advertised, dmaMapRoom(r.sim.options));
    assert.equal(advertised, r.sim.maxDmaMaps);
    // The number the issue was about: 4096 slots less 64 queue pages, 64 granules and the reserve.
    assert.equal(advertised, capacity - 128 - SIM_GUARD_RESERVE);
    assert.equal((await r.sim.stats()).dmaMaps, advertised);
    assert.ok(
      capacity - native.guardSlots().inUse >= SIM_GUARD_RESERVE,
      'at the limit the reserve is still free (a slice renewal takes a slot before it lets one go)',
    );
    // A device-memory granule revoked with every map held: its renewal maps the fresh memory (a guard slot)
    // before it lets the old go — what the reserve is for. (A queue page's revoke takes no slot: its spare
    // replaces the old memory in place.)
    const granule = BigInt(r.sim.options.devmemGranule);
    const [page] = (
      await r.client.feature({
        flags: VFIO_DEVICE_FEATURE_GET,
        feature: VFIO_DEVICE_FEATURE_DMA_BUF,
        data: encodeDmaBufRequest(VFIO_PCI_BAR4_REGION_INDEX, [{ offset: granule, length: granule }]),
      })
    ).fds;
    try {
      await r.client.feature({
        flags: VFIO_DEVICE_FEATURE_SET,
        feature: VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
        data: vfio_device_feature_dma_buf_revoke.encode({ fd_index: 0 }),
        fds: [page!],
      });
      assert.equal(native.fstat(page!.fd).size, 0, 'the old granule was truncated: revoked');
    } finally {
      page!.close();
    }
    const err = await refusal(r.client, memfd, advertised);
    assert.equal(
      err.code,
      'ENOSPC',
      `refused as past the advertised limit, not for want of guard slots: ${err.message}`,
    );
    assert.match(err.message, new RegExp(`at most ${advertised} maps`));
    await unmapAll(r.client);
    assert.equal(mappingsOf(name), 0);
    assert.equal(native.guardSlots().inUse, slotsIdle, 'every map gave its guard slot back');
    assert.equal((await r.sim.stats()).dmaMaps, 0);
  } finally {
    memfd.close();
    await r.close();
  }
  assert.equal(
    openFdCount(),
    fdsBefore,
    'every fd opened for the test (the client dups each map fd) was closed',
  );
});

test('devlease sim --max-dma-maps: advertised over the wire and enforced in the child; a bad value names its range', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'sa1-limit-'));
  const socketPath = join(dir, 'sa1.sock');
  const memfd = MemFd.create(`sa1-test-child-${process.pid}`, { size: Number(PAGE) * 9 });
  const sim = await spawnSimulator({ socketPath, numQueues: 4, maxDmaMaps: 8 });
  try {
    const client = await VfioUserClient.connect(socketPath);
    try {
      assert.equal(client.serverCapabilities.maxDmaMaps, 8);
      for (let i = 0; i < 8; i++) await mapPage(client, memfd, i);
      assert.equal((await refusal(client, memfd, 8)).code, 'ENOSPC');
      const devMaps = readFileSync(`/proc/${sim.pid}/maps`, 'utf8').split('\n');
      assert.equal(devMaps.filter((l) => l.includes(`/memfd:sa1-test-child-${process.pid} `)).length, 8);
      await unmapAll(client);
      assert.equal((await sim.stats()).dmaMaps, 0);
    } finally {
      client.close();
    }
  } finally {
    memfd.close();
    await sim.close();
    rmSync(dir, { recursive: true, force: true });
  }
  for (const bad of ['0', '100000']) {
    const r = spawnSync(process.execPath, [BIN, 'sim', '--socket', socketPath, '--max-dma-maps', bad], {
      encoding: 'utf8',
    });
    assert.equal(r.status, 2, `--max-dma-maps ${bad}: exit 2`);
    assert.match(
      r.stderr,
      /--max-dma-maps must be an integer from 1 to 3904 \(the guard table's 4096 mappings/,
    );
  }
});

test('options whose slices leave the guard table no room for DMA maps are refused by name before anything starts', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'sa1-limit-'));
  try {
    // 1 GiB of 64 KiB granules: 16,384 guarded mappings before any map (was ERR_DEVLEASE_GUARD_TABLE_FULL midway).
    await assert.rejects(
      startSimulator({ socketPath: join(dir, 's.sock'), devmemSize: 1 << 30, devmemGranule: 1 << 16 }),
      (err: Error & { option?: string }) =>
        err.option === 'maxDmaMaps' &&
        /no room for DMA maps: .*16384 device-memory granules/.test(err.message),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
