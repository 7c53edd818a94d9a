// QEMU's human monitor (HMP) over a unix socket, for the one thing a guest test
// needs the host to do that has no QMP command: `pcie_aer_inject_error`.
import { createConnection } from 'node:net';

const PROMPT = '(qemu) ';

/** Sends `command` to the monitor at `path`; resolves with what QEMU printed for it (its echo and prompts cut). */
export function hmp(path, command, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    const sock = createConnection(path);
    let text = '';
    let sent = false;
    const fail = (err) => {
      sock.destroy();
      reject(new Error(`QEMU monitor ${path}, '${command}': ${err.message}`));
    };
    const timer = setTimeout(() => fail(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs);
    sock.setEncoding('utf8');
    sock.on('error', fail);
    sock.on('data', (d) => {
      text += d;
      // The banner ends with the first prompt; the command's output ends with the next.
      if (!sent && text.endsWith(PROMPT)) {
        sent = true;
        text = '';
        sock.write(`${command}\n`);
      } else if (sent && text.endsWith(PROMPT)) {
        clearTimeout(timer);
        sock.end();
        // The monitor echoes the line typed (with terminal escapes) before the output.
        const lines = text.slice(0, -PROMPT.length).split(/\r?\n/);
        resolve(lines.slice(1).join('\n').trim());
      }
    });
  });
}
