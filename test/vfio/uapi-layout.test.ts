// Compares every structure layout, constant and ioctl number in
// src/vfio/uapi (the PCI config-space registers too) against the kernel's own
// headers (linux-libc-dev 7.x from Debian, fetched by scripts/kernel-headers.sh):
// a C probe generated from the TS metadata prints sizeof/offsetof/values as the
// compiler sees them.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { Field, FieldSpec } from '../../src/vfio/struct.js';
import * as uapi from '../../src/vfio/uapi/index.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));

// devlease/SA-1 extensions that the kernel's header does not define (feature
// 13, the dma-buf revoke; Linux 7.3 uses 13 for VFIO_DEVICE_FEATURE_ZPCI_ERROR).
const NOT_IN_KERNEL = new Set([
  'vfio_device_feature_dma_buf_revoke',
  'VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE',
  'DMA_BUF_REVOKE_FLAG_DETACH',
]);

interface Layout {
  name: string;
  size: number;
  fields: readonly Field[];
  offsets: Record<string, number>;
}
const isLayout = (v: unknown): v is Layout =>
  typeof v === 'object' && v !== null && 'fields' in v && 'offsets' in v && 'size' in v && 'name' in v;

const layouts = (Object.values(uapi) as unknown[]).filter(isLayout).filter((l) => !NOT_IN_KERNEL.has(l.name));
const constants = Object.entries(uapi).filter(
  (e): e is [string, number] => typeof e[1] === 'number' && !NOT_IN_KERNEL.has(e[0]),
);

const SCALAR: Record<string, number> = { u8: 1, u16: 2, u32: 4, u64: 8, s32: 4, s64: 8 };
function fieldSize(spec: FieldSpec): number {
  if (typeof spec === 'string') return SCALAR[spec] as number;
  if ('array' in spec) return (SCALAR[spec.array] as number) * spec.count;
  return spec.bytes;
}

/** The C probe: one line per fact, `S name size`, `F name.field offset size`, `C NAME value`. */
function probeSource(): string {
  const lines = [
    '#include <stdio.h>',
    '#include <stddef.h>',
    '#include <linux/version.h>',
    '#include <linux/vfio.h>',
    '#include <linux/iommufd.h>',
    '#include <linux/pci_regs.h>',
    '#define S(T) printf("S %s %zu\\n", #T, sizeof(struct T));',
    '#define F(T, f) printf("F %s.%s %zu %zu\\n", #T, #f, offsetof(struct T, f), sizeof(((struct T *)0)->f));',
    // Every VFIO/iommufd constant fits 32 bits; print them as the u32 the ABI carries.
    '#define C(N) printf("C %s %u\\n", #N, (unsigned)(N));',
    'int main(void) {',
    '  printf("V %u\\n", (unsigned)LINUX_VERSION_CODE);',
  ];
  for (const l of layouts) {
    lines.push(`  S(${l.name})`);
    for (const [f] of l.fields) lines.push(`  F(${l.name}, ${f})`);
  }
  for (const [name] of constants) lines.push(`  C(${name})`);
  lines.push('  return 0;', '}', '');
  return lines.join('\n');
}

function expectedFacts(): Map<string, string> {
  const m = new Map<string, string>();
  for (const l of layouts) {
    m.set(`S ${l.name}`, String(l.size));
    for (const [f, spec] of l.fields) m.set(`F ${l.name}.${f}`, `${l.offsets[f]} ${fieldSize(spec)}`);
  }
  for (const [name, v] of constants) m.set(`C ${name}`, String(v >>> 0));
  return m;
}

function multiarch(): string {
  const triplets: Record<string, string> = { x64: 'x86_64-linux-gnu', arm64: 'aarch64-linux-gnu' };
  const t = triplets[process.arch];
  if (!t) assert.fail(`uapi layout: no Debian multiarch triplet known for ${process.arch}`);
  return t;
}

const fdCount = () => readdirSync('/proc/self/fd').length;

let workDir = '';
let kernelCode = 0;
const actual = new Map<string, string>();
let fdsBefore = 0;

before(() => {
  fdsBefore = fdCount();
  const h = spawnSync('bash', [join(repo, 'scripts/kernel-headers.sh')], { encoding: 'utf8' });
  if (h.error || h.status !== 0) {
    const why = h.error?.message ?? h.stderr.trim().split('\n').pop() ?? `exit ${h.status}`;
    assert.fail(`kernel headers (linux-libc-dev 7.x) unavailable: ${why}`);
  }
  const inc = h.stdout.trim();

  workDir = mkdtempSync(join(tmpdir(), 'devlease-uapi-'));
  const src = join(workDir, 'probe.c');
  const exe = join(workDir, 'probe');
  writeFileSync(src, probeSource());
  const cc = spawnSync(
    'cc',
    ['-std=c11', '-Wall', '-Werror', `-I${inc}`, `-I${join(inc, multiarch())}`, '-o', exe, src],
    {
      encoding: 'utf8',
    },
  );
  if (cc.error)
    assert.fail(`C compiler 'cc' not runnable (needed to build the layout probe): ${cc.error.message}`);
  if (cc.status !== 0) {
    assert.fail(`layout probe does not compile against ${inc} (a name the kernel lacks?):\n${cc.stderr}`);
  }
  const run = spawnSync(exe, { encoding: 'utf8' });
  if (run.status !== 0) assert.fail(`layout probe failed: ${run.error?.message ?? run.stderr}`);
  for (const line of run.stdout.trim().split('\n')) {
    const [kind, key, ...rest] = line.split(' ');
    if (kind === 'V') kernelCode = Number(key);
    else actual.set(`${kind} ${key}`, rest.join(' '));
  }
});

after(() => {
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

test('the probe was built against Linux 7.x uapi headers', () => {
  assert.ok(
    kernelCode >> 16 >= 7,
    `LINUX_VERSION_CODE ${kernelCode >> 16}.${(kernelCode >> 8) & 0xff} is older than 7.0`,
  );
});

test('the comparison covers the structures and ioctls devlease relies on', () => {
  const names = new Set(layouts.map((l) => l.name));
  for (const n of [
    'vfio_group_status',
    'vfio_device_info',
    'vfio_region_info',
    'vfio_region_info_cap_sparse_mmap',
    'vfio_region_info_cap_type',
    'vfio_irq_info',
    'vfio_irq_set',
    'vfio_device_feature',
    'vfio_device_feature_dma_buf',
    'vfio_iommu_type1_info',
    'vfio_iommu_type1_info_cap_iova_range',
    'vfio_iova_range',
    'vfio_iommu_type1_info_dma_avail',
    'vfio_iommu_type1_dma_map',
    'vfio_iommu_type1_dma_unmap',
    'vfio_device_bind_iommufd',
    'vfio_device_attach_iommufd_pt',
    'vfio_device_detach_iommufd_pt',
    'iommu_destroy',
    'iommu_ioas_alloc',
    'iommu_ioas_allow_iovas',
    'iommu_ioas_iova_ranges',
    'iommu_iova_range',
    'iommu_ioas_map',
    'iommu_ioas_map_file',
    'iommu_ioas_change_process',
    'iommu_ioas_unmap',
    'iommu_ioas_copy',
    'iommu_option',
    'iommu_hw_info',
  ]) {
    assert.ok(names.has(n), `struct ${n} is not defined in src/vfio/uapi`);
  }
  const consts = new Set(constants.map(([n]) => n));
  for (const n of [
    'VFIO_DEVICE_FEATURE',
    'VFIO_IOMMU_MAP_DMA',
    'IOMMU_IOAS_MAP_FILE',
    'IOMMU_IOAS_CHANGE_PROCESS',
    'IOMMU_GET_HW_INFO',
    'PCI_STATUS_CAP_LIST',
    'PCI_CAP_ID_MSIX',
    'PCI_MSIX_FLAGS_ENABLE',
  ]) {
    assert.ok(consts.has(n), `${n} is not defined in src/vfio/uapi`);
  }
});

test('struct sizes, field offsets and field sizes match the kernel headers', () => {
  const mismatches: string[] = [];
  for (const [key, want] of expectedFacts()) {
    if (key.startsWith('C ')) continue;
    const got = actual.get(key);
    if (got !== want) mismatches.push(`${key}: devlease ${want}, kernel ${got ?? 'missing'}`);
  }
  assert.deepEqual(mismatches, [], `layouts differ from the kernel's:\n${mismatches.join('\n')}`);
});

test('constants, flags and ioctl numbers match the kernel headers', () => {
  const mismatches: string[] = [];
  for (const [key, want] of expectedFacts()) {
    if (!key.startsWith('C ')) continue;
    const got = actual.get(key);
    if (got !== want) mismatches.push(`${key}: devlease ${want}, kernel ${got ?? 'missing'}`);
  }
  assert.deepEqual(mismatches, [], `values differ from the kernel's:\n${mismatches.join('\n')}`);
});

test('attach/detach carry the pasid fields of the 7.x header', () => {
  // Guards the layout that changed most recently: newer kernels appended pasid.
  assert.equal(actual.get('S vfio_device_attach_iommufd_pt'), '16');
  assert.equal(uapi.vfio_device_attach_iommufd_pt.offsets.pasid, 12);
  assert.equal(uapi.vfio_device_detach_iommufd_pt.size, 12);
});

test('probing leaves no file descriptors behind', () => {
  assert.equal(fdCount(), fdsBefore);
});
