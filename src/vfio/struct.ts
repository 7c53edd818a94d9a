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

const U64_MAX = 0xffffffffffffffffn;
const S64_MIN = -(1n << 63n);
const S64_MAX = (1n << 63n) - 1n;

function writeScalar(
  dv: DataView,
  off: number,
  s: Scalar,
  v: number | bigint,
  where: string,
  index: number,
): void {
  switch (s) {
    case 'u8':
      dv.setUint8(off, checkInt(v, 0, 0xff, where, index));
      return;
    case 'u16':
      dv.setUint16(off, checkInt(v, 0, 0xffff, where, index), true);
      return;
    case 'u32':
      dv.setUint32(off, checkInt(v, 0, 0xffffffff, where, index), true);
      return;
    case 's32':
      dv.setInt32(off, checkInt(v, -0x80000000, 0x7fffffff, where, index), true);
      return;
    case 'u64':
      dv.setBigUint64(off, checkBig(v, 0n, U64_MAX, where, index), true);
      return;
    case 's64':
      dv.setBigInt64(off, checkBig(v, S64_MIN, S64_MAX, where, index), true);
      return;
  }
}

function checkInt(v: number | bigint, min: number, max: number, where: string, index: number): number {
  const n = typeof v === 'bigint' ? Number(v) : v;
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new RangeError(`${at(where, index)}: ${String(v)} is not an integer in [${min}, ${max}]`);
  }
  return n;
}

function checkBig(v: number | bigint, min: bigint, max: bigint, where: string, index: number): bigint {
  if (typeof v === 'number' && !Number.isSafeInteger(v)) {
    throw new RangeError(`${at(where, index)}: ${v} is not a safe integer; pass a bigint`);
  }
  const b = BigInt(v);
  if (b < min || b > max) throw new RangeError(`${at(where, index)}: ${b} is out of range`);
  return b;
}

/** `struct.field`, or `struct.field[i]` for an array element: built only for an error message. */
const at = (where: string, index: number): string => (index < 0 ? where : `${where}[${index}]`);

/**
 * One field as encode and decode walk it, worked out once per layout: every encode and decode of a request
 * runs these, so nothing per field is looked up, destructured or formatted on the way (issue 16).
 */
interface FieldPlan {
  readonly name: string;
  /** Offset in the struct. */
  readonly offset: number;
  /** The scalar of a scalar field or of an array's elements; null for a byte field. */
  readonly scalar: Scalar | null;
  /** Elements of an array field (-1: a scalar); bytes of a byte field. */
  readonly count: number;
  /** `struct.field`, for error messages. */
  readonly where: string;
}

export function struct<const F extends readonly Field[]>(
  name: string,
  fields: F,
  opts: { packed?: boolean } = {},
): StructLayout<F> {
  const offsets: Record<string, number> = {};
  const plan: FieldPlan[] = [];
  let off = 0;
  let maxAlign = 1;
  for (const [fname, spec] of fields) {
    const { size, align } = specSize(spec);
    const a = opts.packed ? 1 : align;
    off = Math.ceil(off / a) * a;
    offsets[fname] = off;
    const where = `${name}.${fname}`;
    if (typeof spec === 'string') plan.push({ name: fname, offset: off, scalar: spec, count: -1, where });
    else if ('array' in spec)
      plan.push({ name: fname, offset: off, scalar: spec.array, count: spec.count, where });
    else plan.push({ name: fname, offset: off, scalar: null, count: spec.bytes, where });
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
    for (let f = 0; f < plan.length; f++) {
      const p = plan[f] as FieldPlan;
      const pos = offset + p.offset;
      const fv = v[p.name];
      if (p.scalar === null) {
        const bytes = (fv as Uint8Array | undefined) ?? EMPTY;
        if (bytes.byteLength > p.count) {
          throw new RangeError(`${p.where}: ${bytes.byteLength} bytes, room for ${p.count}`);
        }
        buf.fill(0, pos, pos + p.count);
        buf.set(bytes, pos);
      } else if (p.count < 0) {
        writeScalar(dv, pos, p.scalar, (fv as number | bigint | undefined) ?? 0, p.where, -1);
      } else {
        const arr = (fv as (number | bigint)[] | undefined) ?? NONE;
        if (arr.length > p.count)
          throw new RangeError(`${p.where}: ${arr.length} elements, room for ${p.count}`);
        const es = SCALAR_SIZE[p.scalar];
        for (let i = 0; i < p.count; i++) writeScalar(dv, pos + i * es, p.scalar, arr[i] ?? 0, p.where, i);
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
    for (let f = 0; f < plan.length; f++) {
      const p = plan[f] as FieldPlan;
      const pos = offset + p.offset;
      if (p.scalar === null) out[p.name] = buf.slice(pos, pos + p.count);
      else if (p.count < 0) out[p.name] = readScalar(dv, pos, p.scalar);
      else {
        const es = SCALAR_SIZE[p.scalar];
        const arr: (number | bigint)[] = [];
        for (let i = 0; i < p.count; i++) arr.push(readScalar(dv, pos + i * es, p.scalar));
        out[p.name] = arr;
      }
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

const EMPTY = new Uint8Array(0);
const NONE: readonly (number | bigint)[] = [];

/** Linux's _IOC encoding (asm-generic/ioctl.h, as used on x86-64). */
export const IOC_NONE = 0;
export const IOC_WRITE = 1;
export const IOC_READ = 2;
export function IOC(dir: number, type: number, nr: number, size: number): number {
  // dir:2 | size:14 | type:8 | nr:8, as an unsigned 32-bit value.
  return ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0;
}
export const IO = (type: number, nr: number): number => IOC(IOC_NONE, type, nr, 0);
