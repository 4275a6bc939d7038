import type { StartFence } from './types.ts';

/** The same start (generation and attempt). */
export function sameFence(a: StartFence, b: StartFence): boolean {
  return a.generation === b.generation && a.attempt === b.attempt;
}

/** `a` is a start before `b` (an older generation, or an earlier attempt of the same one). */
export function isOlder(a: StartFence, b: StartFence): boolean {
  return a.generation < b.generation || (a.generation === b.generation && a.attempt < b.attempt);
}
