// Who holds the device: for each connection the simulator has accepted on its
// socket, the processes holding the other end — the kernel's view (ss -xp),
// which sees through SCM_RIGHTS where SO_PEERCRED (the pid at connect time) does not.
import { spawnSync } from 'node:child_process';

/** Per connection accepted on `simSocket`: the pids (sorted, unique) that hold its peer socket. */
export function deviceHolders(simSocket: string): number[][] {
  const r = spawnSync('ss', ['-xpnH'], { encoding: 'utf8', timeout: 20_000 });
  if (r.error || r.status !== 0)
    throw new Error(`ss (iproute2) is needed to see who holds the device: ${r.error?.message ?? r.stderr}`);
  const rows = r.stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((c) => c[0] === 'u_str' && c[1] === 'ESTAB');
  const byInode = new Map(rows.map((c) => [c[5], c.slice(8).join(' ')]));
  return rows
    .filter((c) => c[4] === simSocket)
    .map((c) => {
      const users = byInode.get(c[7]) ?? '';
      return [...new Set([...users.matchAll(/pid=(\d+)/g)].map((m) => Number(m[1])))].sort();
    });
}
