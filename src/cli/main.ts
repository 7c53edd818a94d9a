// devlease command line: dispatches to sub-commands.
import { VERSION } from '../index.js';

export async function main(argv: string[]): Promise<void> {
  const [cmd] = argv;
  if (cmd === '--version' || cmd === '-v' || cmd === 'version') {
    process.stdout.write(`devlease ${VERSION}\n`);
    return;
  }
  process.stderr.write(`devlease: unknown command '${cmd ?? ''}'\n`);
  process.exitCode = 2;
}
