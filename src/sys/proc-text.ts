// A small /proc file as text, read with the addon's open/read: not node:fs, whose ESM import loads its stream
// classes (~20 builtin modules) into every process that loads it — every client (issue 16).
import { Fd } from './fd.js';
import { native } from './native.js';

const { O_RDONLY } = native.constants as Record<string, number>;

export function readProcText(path: string): string {
  const fd = new Fd(native.open(path, O_RDONLY!));
  try {
    const chunks: Uint8Array[] = [];
    for (;;) {
      const buf = new Uint8Array(4096);
      const n = native.read(fd.fd, buf);
      if (n <= 0) break;
      chunks.push(buf.subarray(0, n));
    }
    return Buffer.concat(chunks).toString('utf8');
  } finally {
    fd.close();
  }
}
