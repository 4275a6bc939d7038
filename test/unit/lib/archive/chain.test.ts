import { createHash } from 'node:crypto';
import { chainOf, GENESIS_CHAIN, nextChain, nextChainBytes } from '../../../../lib/archive/chain.ts';

const sha = (text: string): string => createHash('sha256').update(text).digest('hex');

describe('archive chain', () => {
  const hashes = ['a', 'b', 'c'].map(sha);

  it('links SHA-256(prev ‖ eventHash) over the raw 32 ‖ 32 bytes, from 32 zero bytes', () => {
    expect(GENESIS_CHAIN).toBe('0'.repeat(64));
    const expected = createHash('sha256').update(Buffer.alloc(32)).update(Buffer.from(hashes[0]!, 'hex')).digest('hex');
    expect(nextChain(GENESIS_CHAIN, hashes[0]!)).toBe(expected);
    expect(nextChainBytes(Buffer.alloc(32), Buffer.from(hashes[0]!, 'hex')).toString('hex')).toBe(expected);
    // A known vector, so an independent verifier can check itself against this one.
    expect(nextChain(GENESIS_CHAIN, sha('a'))).toBe(
      createHash('sha256').update(Buffer.concat([Buffer.alloc(32), createHash('sha256').update('a').digest()])).digest('hex'),
    );
  });

  it('gives the first and last link of a run, and continues across runs', () => {
    const c0 = nextChain(GENESIS_CHAIN, hashes[0]!);
    const c1 = nextChain(c0, hashes[1]!);
    const c2 = nextChain(c1, hashes[2]!);
    expect(chainOf(GENESIS_CHAIN, hashes)).toEqual({ first: c0, last: c2 });
    expect(chainOf(GENESIS_CHAIN, hashes.slice(0, 1))).toEqual({ first: c0, last: c0 });
    // Split across two files (or days): the second continues from the first's last link.
    const head = chainOf(GENESIS_CHAIN, hashes.slice(0, 2));
    expect(chainOf(head.last, hashes.slice(2))).toEqual({ first: c2, last: c2 });
  });

  it('depends on the order and on every hash', () => {
    const reordered = chainOf(GENESIS_CHAIN, [hashes[1]!, hashes[0]!, hashes[2]!]);
    expect(reordered.last).not.toBe(chainOf(GENESIS_CHAIN, hashes).last);
    expect(chainOf(GENESIS_CHAIN, [hashes[0]!, hashes[2]!]).last).not.toBe(chainOf(GENESIS_CHAIN, hashes).last);
  });

  it('refuses hex that is not 32 lower-case bytes, and an empty run', () => {
    const codeOf = (fn: () => unknown): unknown => {
      try { fn(); } catch (error) { return (error as { code?: unknown }).code; }
      return undefined;
    };
    expect(codeOf(() => nextChain('00', hashes[0]!))).toBe('archive.chain_bad_hex');
    expect(codeOf(() => nextChain(GENESIS_CHAIN, hashes[0]!.toUpperCase()))).toBe('archive.chain_bad_hex');
    expect(codeOf(() => chainOf(GENESIS_CHAIN, []))).toBe('archive.chain_empty');
  });
});
