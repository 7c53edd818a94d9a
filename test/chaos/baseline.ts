// What "back to baseline" means for the chaos suite: the broker's and the
// simulator's descriptors (the broker's without the slice fds it holds
// prepared, bounded on their own: helpers/prepared-fds.ts) and memfd mappings (DMA memory, slices), the lease
// table, and this process's children (only the simulator and the broker).
// RSS is compared with a bound, not equality (the heap breathes).
import { readdirSync, readFileSync } from 'node:fs';
import { adminRequest } from '../../src/cli/admin.js';
import { preparedFds } from '../helpers/prepared-fds.js';
import { fdCount, mappingCount, rssBytes } from '../helpers/proc-stat.js';

export interface Snapshot {
  leases: number;
  brokerFds: number;
  simFds: number;
  brokerMemfdMaps: number;
  simMemfdMaps: number;
  children: number[];
}

/** Pids whose parent is this process. */
export function childPids(): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === process.pid) out.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return out.sort((a, b) => a - b);
}

export async function snapshot(brokerPid: number, simPid: number, admin: string): Promise<Snapshot> {
  const leases = (await adminRequest(admin, { op: 'leases' }, 60_000)) as unknown[];
  const prepared = await preparedFds(admin);
  return {
    leases: leases.length,
    // Every fd but the prepared slice fds, which come and go with the churn (bounded by the cap, checked above).
    brokerFds: fdCount(brokerPid) - prepared,
    simFds: fdCount(simPid),
    brokerMemfdMaps: mappingCount(brokerPid, 'memfd:'),
    simMemfdMaps: mappingCount(simPid, 'memfd:'),
    children: childPids(),
  };
}

export const rss = rssBytes;

/** Waits (up to `timeoutMs`) for a snapshot equal to `base`; returns null, or the last differing one. */
export async function backToBaseline(
  base: Snapshot,
  take: () => Promise<Snapshot>,
  timeoutMs: number,
): Promise<Snapshot | null> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const now = await take();
    if (JSON.stringify(now) === JSON.stringify(base)) return null;
    if (Date.now() > end) return now;
    await new Promise((r) => setTimeout(r, 100));
  }
}
