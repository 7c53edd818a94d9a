// Sockets the broker is given instead of binding its own: systemd's (socket
// activation, named by FileDescriptorName=) or an upgrading broker's. Each is
// checked against the device's lease kinds before anything is served on it.

import { type ListenSocket, listenFdsError } from '../sys/index.js';

/**
 * The inherited sockets by name, checked: each name a lease kind (SOCK_STREAM) or 'admin' (SOCK_SEQPACKET),
 * once. On a refusal every inherited socket is closed and the error names the socket.
 */
export function takeInherited(listening: ListenSocket[], kinds: string[]): Map<string, ListenSocket> {
  const byName = new Map<string, ListenSocket>();
  const refuse = (why: string) => {
    for (const l of listening) l.fd.close();
    throw listenFdsError(why);
  };
  for (const l of listening) {
    const want = l.name === 'admin' ? 'seqpacket' : kinds.includes(l.name) ? 'stream' : null;
    if (want === null)
      refuse(
        `socket '${l.name}' (${l.path || 'unnamed'}) names no lease kind of this device (${kinds.join(', ')}) nor 'admin'`,
      );
    if (l.type !== want)
      refuse(`socket '${l.name}' (${l.path || 'unnamed'}) is ${l.type}; it must be ${want}`);
    if (byName.has(l.name)) refuse(`two sockets are named '${l.name}'`);
    byName.set(l.name, l);
  }
  return byName;
}
