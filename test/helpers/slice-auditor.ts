// A SliceAuditor for the /proc audit's tests (src/broker/audit-scan): action 'report' (records only, no revoke)
// and a deadline that kills, with no background scan to race the test (a minute's period) and no hand-off
// grace, unless `config` says otherwise. The audit log is in memory (`audit.recent`); revokes asked are listed.
import { AuditLog } from '../../src/broker/audit.js';
import { type DirectAuditConfig, SliceAuditor } from '../../src/broker/audit-scan/auditor.js';
import type { FileIdentity } from '../../src/broker/audit-scan/proc-scan.js';

export function testAuditor(target: FileIdentity, config: Partial<DirectAuditConfig> = {}) {
  const audit = new AuditLog(null);
  const revoked: string[] = [];
  const a = new SliceAuditor(
    target,
    { action: 'report', periodMs: 60_000, handoffGraceMs: 0, deadlineAction: 'kill', ...config },
    { audit, revoke: (id) => revoked.push(id), log: () => {} },
  );
  return { a, audit, revoked };
}
