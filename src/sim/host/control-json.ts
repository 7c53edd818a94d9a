// The JSON-lines control channel of `devlease sim --control-stdin` (child.ts
// writes it, cli/sim.ts reads it): fault injections are JSON, and a bigint
// (an IOVA) is written as {"$big": "123"}.

export function bigintReplacer(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? { $big: value.toString() } : value;
}

export function bigintReviver(_key: string, value: unknown): unknown {
  if (value && typeof value === 'object' && '$big' in value && Object.keys(value).length === 1) {
    return BigInt((value as { $big: string }).$big);
  }
  return value;
}
