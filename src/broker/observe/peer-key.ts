// Who a metrics connection counts against for the per-peer limit (metrics-server.ts, MAX_PER_PEER). One IPv4
// address is one peer. One IPv6 address is not: a host is routinely given a whole /64 (SLAAC, privacy
// addresses) and can connect from as many of its addresses as it likes, so keyed by address one host took every
// slot of the endpoint, four an address. An IPv6 peer is its /64 prefix. An IPv4-mapped IPv6 address
// (::ffff:a.b.c.d: an IPv4 peer of a dual-stack listener, which is how Node reports it there) is its IPv4
// address: keyed by its /64 every IPv4 peer would share one count, ::ffff:0:0/64.
import { isIPv4, isIPv6 } from 'node:net';

/** The per-peer limit's key of a TCP peer's address (as Node's socket.remoteAddress gives it). */
export function addressKey(address: string): string {
  if (isIPv4(address)) return `addr ${address}`;
  const groups = isIPv6(address) ? ipv6Groups(address) : null;
  if (groups === null) return `addr ${address}`; // not an IP address (Node gives none other): counted as itself
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    const [hi, lo] = [groups[6]!, groups[7]!];
    return `addr ${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
  }
  return `net ${groups
    .slice(0, 4)
    .map((g) => g.toString(16))
    .join(':')}::/64`;
}

/**
 * The eight 16-bit groups of an IPv6 address (one `isIPv6` accepts): `::` expanded, a dotted IPv4 tail made two
 * groups, a zone (`%eth0`) dropped. Link-local peers of different interfaces then share a count, which errs on
 * the side of fewer slots.
 */
function ipv6Groups(address: string): number[] {
  let text = address.split('%')[0]!;
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, dotted.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const parse = (s: string) => (s === '' ? [] : s.split(':').map((g) => Number.parseInt(g, 16)));
  const front = parse(head);
  const back = tail === undefined ? [] : parse(tail);
  const zeros = tail === undefined ? 0 : 8 - front.length - back.length;
  return [...front, ...new Array<number>(zeros).fill(0), ...back];
}
