// `devlease bench` / `npm run bench`: placeholder until the benchmark suite lands.
export async function benchCommand(_argv: string[]): Promise<number> {
  process.stderr.write('devlease bench: the benchmark suite is not built yet\n');
  return 1;
}
