// A lease session's virtual PCI state — its config space as the client wrote
// it (command register, BAR addresses, MSI-X enable and mask) and the trapped
// MSI-X table (each vector's address, data and mask) — as an upgrade carries
// it (handover/format.ts, HandedSession.pci). A stock client such as QEMU
// programs these once and never reads them again from the device; were they
// reset by an upgrade, its next config read or MSI-X table read (a migration,
// a guest reboot's probe) would see a device it never configured.

import { CONFIG_SPACE_SIZE } from '../drivers/config-space.js';
import type { LeaseMsix } from './lease-msix.js';

export interface SessionPciState {
  /** The 256-byte config space, base64. */
  config: string;
  /** The MSI-X table, base64; null when the lease has no MSI-X capability. */
  msixTable: string | null;
}

export function encodePciState(config: Uint8Array, msix: LeaseMsix | null): SessionPciState {
  return {
    config: Buffer.from(config).toString('base64'),
    msixTable: msix ? Buffer.from(msix.tableBytes()).toString('base64') : null,
  };
}

/**
 * Put a carried state back into a session made afresh for the same lease. Throws naming the problem when the
 * state cannot be this lease's (a config space of another size, a table where there is none or of another
 * size): the new broker refuses the document and the old one rolls back.
 */
export function restorePciState(state: SessionPciState, config: Uint8Array, msix: LeaseMsix | null): void {
  const bytes = Buffer.from(state.config, 'base64');
  if (bytes.byteLength !== CONFIG_SPACE_SIZE)
    throw new Error(
      `a carried config space of ${bytes.byteLength} bytes (a lease's has ${CONFIG_SPACE_SIZE})`,
    );
  if ((state.msixTable === null) !== (msix === null))
    throw new Error(
      `the carried session ${state.msixTable === null ? 'has no' : 'has an'} MSI-X table; this lease ${msix ? 'has one' : 'has none'}`,
    );
  if (msix && state.msixTable !== null) msix.restoreTable(Buffer.from(state.msixTable, 'base64'));
  config.set(bytes);
}
