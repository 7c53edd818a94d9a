// The slice fds a broker holds prepared for its next grants (lifetime.prepared_slice_fds, default 8; docs/CONFIG.md):
// they come and go with the reclaims, so a test that counts the broker's descriptors leaves them out and bounds
// them on their own. Read from the broker's own status (`driver.preparedSliceFds`) through its admin socket.
import { adminRequest } from '../../src/cli/admin.js';

/** The most a broker holds with the default configuration. */
export const PREPARED_CAP = 8;

/** How many slice fds the broker behind `admin` holds prepared; throws past PREPARED_CAP or when it says nothing. */
export async function preparedFds(admin: string): Promise<number> {
  const status = (await adminRequest(admin, { op: 'status' }, 60_000)) as {
    driver?: { preparedSliceFds?: number };
  };
  const n = status.driver?.preparedSliceFds;
  if (typeof n !== 'number')
    throw new Error(`status says nothing of prepared slice fds: ${JSON.stringify(status)}`);
  if (n > PREPARED_CAP)
    throw new Error(`the broker holds ${n} prepared slice fds, over the cap of ${PREPARED_CAP}`);
  return n;
}
