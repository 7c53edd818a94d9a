// A small declarative layout for C structures that cross the kernel or the
// vfio-user wire. One description gives the size, each field's offset, an
// encoder and a decoder, and the metadata the layout test uses to compare
// against the kernel's own headers (sizeof/offsetof from a compiled C program).
//
// Layout follows the C ABI of x86-64 Linux: each field aligned to its natural
// alignment, the struct padded to its largest member's alignment. Structures
// the kernel declares __packed set `packed: true`. Everything is little-endian;
// 64-bit fields are bigint.

export type Scalar = 'u8' | 'u16' | 'u32' | 'u64' | 's32' | 's64';
export type FieldSpec = Scalar | { array: Scalar; count: number } | { bytes: number };
export type Field = readonly [name: string, spec: FieldSpec];

type ScalarValue<S extends Scalar> = S extends 'u64' | 's64' ? bigint : number;
type FieldValue<F extends FieldSpec> = F extends Scalar
  ? ScalarValue<F>
  : F extends { array: infer S extends Scalar }
    ? ScalarValue<S>[]
    : Uint8Array;

export type StructValue<F extends readonly Field[]> = {
  -readonly [K in F[number] as K[0]]: FieldValue<K[1]>;
};

export interface StructLayout<F extends readonly Field[]> {
  /** The kernel's (or spec's) name for this structure, e.g. `vfio_region_info`. */
  readonly name: string;
  /** sizeof(struct): fixed part only; flexible array members are not counted. */
  readonly size: number;
  readonly align: number;
  readonly fields: F;
  readonly offsets: Readonly<Record<F[number][0], number>>;
  /** Encode into `out` at `offset` (a fresh buffer of `size` bytes when omitted). Missing fields are 0. */
  encode(value: Partial<StructValue<F>>, out?: Uint8Array, offset?: number): Uint8Array;
  /** Decode from `buf` at `offset`; throws RangeError naming the struct when `buf` is too short. */
  decode(buf: Uint8Array, offset?: number): StructValue<F>;
}

const SCALAR_SIZE: Record<Scalar, number> = { u8: 1, u16: 2, u32: 4, u64: 8, s32: 4, s64: 8 };

function specSize(spec: FieldSpec): { size: number; align: number } {
  if (typeof spec === 'string') return { size: SCALAR_SIZE[spec], align: SCALAR_SIZE[spec] };
  if ('array' in spec) return { size: SCALAR_SIZE[spec.array] * spec.count, align: SCALAR_SIZE[spec.array] };
  return { size: spec.bytes, align: 1 };
}

function readScalar(dv: DataView, off: number, s: Scalar): number | bigint {
  switch (s) {
    case 'u8':
      return dv.getUint8(off);
    case 'u16':
      return dv.getUint16(off, true);
    case 'u32':
      return dv.getUint32(off, true);
    case 's32':
      return dv.getInt32(off, true);
    case 'u64':
      return dv.getBigUint64(off, true);
    case 's64':
      return dv.getBigInt64(off, true);
  }
}

function writeScalar(dv: DataView, off: number, s: Scalar, v: number | bigint, where: string): void {
  switch (s) {
    case 'u8':
      dv.setUint8(off, checkInt(v, 0, 0xff, where));
      return;
    case 'u16':
      dv.setUint16(off, checkInt(v, 0, 0xffff, where), true);
      return;
    case 'u32':
      dv.setUint32(off, checkInt(v, 0, 0xffffffff, where), true);
      return;
    case 's32':
      dv.setInt32(off, checkInt(v, -0x80000000, 0x7fffffff, where), true);
      return;
    case 'u64':
      dv.setBigUint64(off, checkBig(v, 0n, 0xffffffffffffffffn, where), true);
      return;
    case 's64':
      dv.setBigInt64(off, checkBig(v, -(1n << 63n), (1n << 63n) - 1n, where), true);
      return;
  }
}

function checkInt(v: number | bigint, min: number, max: number, where: string): number {
  const n = typeof v === 'bigint' ? Number(v) : v;
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new RangeError(`${where}: ${String(v)} is not an integer in [${min}, ${max}]`);
  }
  return n;
}

function checkBig(v: number | bigint, min: bigint, max: bigint, where: string): bigint {
  if (typeof v === 'number' && !Number.isSafeInteger(v)) {
    throw new RangeError(`${where}: ${v} is not a safe integer; pass a bigint`);
  }
  const b = BigInt(v);
  if (b < min || b > max) throw new RangeError(`${where}: ${b} is out of range`);
  return b;
}

export function struct<const F extends readonly Field[]>(
  name: string,
  fields: F,
  opts: { packed?: boolean } = {},
): StructLayout<F> {
  const offsets: Record<string, number> = {};
  let off = 0;
  let maxAlign = 1;
  for (const [fname, spec] of fields) {
    const { size, align } = specSize(spec);
    const a = opts.packed ? 1 : align;
    off = Math.ceil(off / a) * a;
    offsets[fname] = off;
    off += size;
    maxAlign = Math.max(maxAlign, a);
  }
  const size = Math.ceil(off / maxAlign) * maxAlign;

  const encode = (value: Partial<StructValue<F>>, out?: Uint8Array, offset = 0): Uint8Array => {
    const buf = out ?? new Uint8Array(size);
    if (buf.byteLength < offset + size) {
      throw new RangeError(
        `${name}: encode needs ${size} bytes at offset ${offset}, buffer has ${buf.byteLength}`,
      );
    }
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const v = value as Record<string, unknown>;
    for (const [fname, spec] of fields) {
      const at = offset + (offsets[fname] as number);
      const fv = v[fname];
      const where = `${name}.${fname}`;
      if (typeof spec === 'string') {
        writeScalar(dv, at, spec, (fv as number | bigint | undefined) ?? 0, where);
      } else if ('array' in spec) {
        const arr = (fv as (number | bigint)[] | undefined) ?? [];
        if (arr.length > spec.count)
          throw new RangeError(`${where}: ${arr.length} elements, room for ${spec.count}`);
        const es = SCALAR_SIZE[spec.array];
        for (let i = 0; i < spec.count; i++)
          writeScalar(dv, at + i * es, spec.array, arr[i] ?? 0, `${where}[${i}]`);
      } else {
        const bytes = (fv as Uint8Array | undefined) ?? new Uint8Array(0);
        if (bytes.byteLength > spec.bytes) {
          throw new RangeError(`${where}: ${bytes.byteLength} bytes, room for ${spec.bytes}`);
        }
        buf.fill(0, at, at + spec.bytes);
        buf.set(bytes, at);
      }
    }
    return buf;
  };

  const decode = (buf: Uint8Array, offset = 0): StructValue<F> => {
    if (buf.byteLength < offset + size) {
      throw new RangeError(
        `${name}: needs ${size} bytes at offset ${offset}, have ${buf.byteLength - offset}`,
      );
    }
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const out: Record<string, unknown> = {};
    for (const [fname, spec] of fields) {
      const at = offset + (offsets[fname] as number);
      if (typeof spec === 'string') out[fname] = readScalar(dv, at, spec);
      else if ('array' in spec) {
        const es = SCALAR_SIZE[spec.array];
        out[fname] = Array.from({ length: spec.count }, (_, i) => readScalar(dv, at + i * es, spec.array));
      } else out[fname] = buf.slice(at, at + spec.bytes);
    }
    return out as StructValue<F>;
  };

  return {
    name,
    size,
    align: maxAlign,
    fields,
    offsets: offsets as Record<F[number][0], number>,
    encode,
    decode,
  };
}

/** Linux's _IOC encoding (asm-generic/ioctl.h, as used on x86-64). */
export const IOC_NONE = 0;
export const IOC_WRITE = 1;
export const IOC_READ = 2;
export function IOC(dir: number, type: number, nr: number, size: number): number {
  // dir:2 | size:14 | type:8 | nr:8, as an unsigned 32-bit value.
  return ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0;
}
export const IO = (type: number, nr: number): number => IOC(IOC_NONE, type, nr, 0);
