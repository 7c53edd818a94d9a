// An integer option of the command line, read strictly: decimal digits only. Number() also took '0x4' (4),
// '1e1' (10), ' 4' and '' (0, for the empty string), and a check for Number.isInteger then let those through;
// a run of digits past 2^53 was read rounded. Each is a usage error naming the option and quoting the value.

/** `value` as an integer in [min, max], or the message to print (the caller exits 2 with its usage). */
export function intOption(
  name: string,
  value: string,
  min: number,
  max: number,
  unit = '',
): number | { error: string } {
  const n = /^[0-9]+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max)
    return {
      error: `${name} must be an integer from ${min} to ${max}${unit && ` (${unit})`}, got '${value}'`,
    };
  return n;
}
