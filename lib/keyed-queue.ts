/**
 * Runs work one at a time per key, in call order; different keys run independently. A failed piece
 * of work does not hold up the next one for its key. Used wherever one agent's operations must not
 * interleave (the lifecycle applier, the allocator drivers).
 */
export interface KeyedQueue {
  run<T>(key: string, work: () => Promise<T>): Promise<T>;
  /** True while work for `key` is queued or running. */
  busy(key: string): boolean;
  /** Resolves once the work queued for `key` so far is done. */
  settled(key: string): Promise<void>;
  /** Resolves once every piece of work is done, including work queued meanwhile. */
  idle(): Promise<void>;
}

export function createKeyedQueue(): KeyedQueue {
  const tails = new Map<string, Promise<void>>();
  return {
    run(key, work) {
      const result = (tails.get(key) ?? Promise.resolve()).then(work, work);
      const tail = result.then(
        () => undefined,
        () => undefined,
      );
      tails.set(key, tail);
      void tail.then(() => {
        if (tails.get(key) === tail) tails.delete(key);
      });
      return result;
    },
    busy: (key) => tails.has(key),
    async settled(key) {
      await tails.get(key);
    },
    async idle() {
      while (tails.size > 0) await Promise.all([...tails.values()]);
    },
  };
}
