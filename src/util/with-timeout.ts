// A wait with a deadline: what `p` settles with, or a rejection once `ms` have passed first. The promise itself
// cannot be cancelled (an import(), a policy hook, a device read): it is left to settle unheard. The timer is
// cleared either way, so it holds neither the event loop nor memory past the race.

export async function withTimeout<T>(p: Promise<T>, ms: number, message: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(message())), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
