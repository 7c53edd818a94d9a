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
    throw new RangeError(`${fieldName(where, index)}: ${String(v)} is not an integer in [${min}, ${max}]`);
  }
  return n;
}

function checkBig(v: number | bigint, min: bigint, max: bigint, where: string, index: number): bigint {
  if (typeof v === 'number' && !Number.isSafeInteger(v)) {
    throw new RangeError(`${fieldName(where, index)}: ${v} is not a safe integer; pass a bigint`);
  }
  const b = BigInt(v);
  if (b < min || b > max) throw new RangeError(`${fieldName(where, index)}: ${b} is out of range`);
  return b;
}

/** `struct.field`, or `struct.field[i]` for an array element: built only for an error message. */
const fieldName = (where: string, index: number): string => (index < 0 ? where : `${where}[${index}]`);

const NO_BYTES = new Uint8Array(0);
const NO_ELEMENTS: readonly (number | bigint)[] = [];

/**
 * One field as encode and decode walk it, worked out once per layout: every request on the wire is encoded
 * and decoded through these, mostly by code that runs a few times per lease and so runs cold, so the walk
 * neither destructures the field list nor formats a name unless a value is refused (issue 16).
 */
type FieldPlan = {
  readonly name: string;
  /** Byte offset in the struct. */
  readonly offset: number;
  /** `struct.field`, for error messages. */
  readonly where: string;
} & (
  | { readonly kind: 'scalar'; readonly scalar: Scalar }
  | { readonly kind: 'array'; readonly scalar: Scalar; readonly count: number; readonly elementSize: number }
  | { readonly kind: 'bytes'; readonly length: number }
);

function planField(struct: string, fname: string, spec: FieldSpec, offset: number): FieldPlan {
  const where = `${struct}.${fname}`;
  if (typeof spec === 'string') return { name: fname, offset, where, kind: 'scalar', scalar: spec };
  if ('array' in spec) {
    if (!Number.isSafeInteger(spec.count) || spec.count < 0) {
      throw new RangeError(`${where}: an array of ${spec.count} elements`);
    }
    const elementSize = SCALAR_SIZE[spec.array];
    return { name: fname, offset, where, kind: 'array', scalar: spec.array, count: spec.count, elementSize };
  }
  if (!Number.isSafeInteger(spec.bytes) || spec.bytes < 0)
    throw new RangeError(`${where}: ${spec.bytes} bytes`);
  return { name: fname, offset, where, kind: 'bytes', length: spec.bytes };
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
    if (Object.hasOwn(offsets, fname)) throw new RangeError(`${name}.${fname}: a second field of that name`);
    const { size, align } = specSize(spec);
    const a = opts.packed ? 1 : align;
    off = Math.ceil(off / a) * a;
    offsets[fname] = off;
    plan.push(planField(name, fname, spec, off));
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
    // Indexed, not for-of: in code that has not been optimized yet, for-of walks an iterator (issue 16).
    for (let f = 0; f < plan.length; f++) {
      const p = plan[f] as FieldPlan;
      const pos = offset + p.offset;
      const fv = v[p.name];
      if (p.kind === 'scalar') {
        writeScalar(dv, pos, p.scalar, (fv as number | bigint | undefined) ?? 0, p.where, -1);
      } else if (p.kind === 'array') {
        const arr = (fv as (number | bigint)[] | undefined) ?? NO_ELEMENTS;
        if (arr.length > p.count) {
          throw new RangeError(`${p.where}: ${arr.length} elements, room for ${p.count}`);
        }
        for (let i = 0; i < p.count; i++) {
          writeScalar(dv, pos + i * p.elementSize, p.scalar, arr[i] ?? 0, p.where, i);
        }
      } else {
        const bytes = (fv as Uint8Array | undefined) ?? NO_BYTES;
        if (bytes.byteLength > p.length) {
          throw new RangeError(`${p.where}: ${bytes.byteLength} bytes, room for ${p.length}`);
        }
        buf.fill(0, pos, pos + p.length);
        buf.set(bytes, pos);
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
      if (p.kind === 'scalar') out[p.name] = readScalar(dv, pos, p.scalar);
      else if (p.kind === 'array') {
        const arr: (number | bigint)[] = [];
        for (let i = 0; i < p.count; i++) arr.push(readScalar(dv, pos + i * p.elementSize, p.scalar));
        out[p.name] = arr;
      } else {
        // A copy, whatever `buf` is: a Buffer's own slice() is a view of the same memory, which a caller
        // reusing its buffer would change under the decoded value (the transport gives each message its own).
        out[p.name] = Uint8Array.prototype.slice.call(buf, pos, pos + p.length);
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

/** Linux's _IOC encoding (asm-generic/ioctl.h, as used on x86-64). */
export const IOC_NONE = 0;
export const IOC_WRITE = 1;
export const IOC_READ = 2;
export function IOC(dir: number, type: number, nr: number, size: number): number {
  // dir:2 | size:14 | type:8 | nr:8, as an unsigned 32-bit value.
  return ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0;
}
export const IO = (type: number, nr: number): number => IOC(IOC_NONE, type, nr, 0);
