import { createHash } from 'node:crypto';
import { permanentError } from '../errors.ts';

/**
 * Per-partition hash chain over the archived audit events, in offset order:
 *   chain_i = SHA-256(chain_{i-1} ‖ eventHash_i)   (raw 32 ‖ 32 bytes)
 * with chain_{-1} = 32 zero bytes before the first record ever archived on the partition. It continues
 * across files and days, so removing, reordering or altering any record breaks every later link.
 * Text form is lower-case hex everywhere (file headers, `audit_files`, manifests).
 */
export const GENESIS_CHAIN = '0'.repeat(64);

const HEX_32 = /^[0-9a-f]{64}$/;

function bytes32(hex: string, what: string): Buffer {
  if (!HEX_32.test(hex)) {
    throw permanentError('archive.chain_bad_hex', `${what} must be 64 lower-case hex characters`, undefined, { what, length: hex.length });
  }
  return Buffer.from(hex, 'hex');
}

/** One link on raw bytes: the hot path of the archiver and the verifier (no hex round trips). */
export function nextChainBytes(prev: Uint8Array, eventHash: Uint8Array): Buffer {
  return createHash('sha256').update(prev).update(eventHash).digest();
}

export function nextChain(prevHex: string, eventHashHex: string): string {
  return nextChainBytes(bytes32(prevHex, 'chain'), bytes32(eventHashHex, 'event hash')).toString('hex');
}

export interface ChainSpan {
  /** Chain value of the first hash (its record's link). */
  readonly first: string;
  /** Chain value of the last hash: the `prev` of whatever follows. */
  readonly last: string;
}

/** Chains `hashes` after `prevHex`. An empty list has no first link: throws (a file is never empty). */
export function chainOf(prevHex: string, hashes: readonly string[]): ChainSpan {
  if (hashes.length === 0) throw permanentError('archive.chain_empty', 'cannot chain an empty list of event hashes');
  let chain = bytes32(prevHex, 'chain');
  let first: Buffer | undefined;
  for (const hash of hashes) {
    chain = nextChainBytes(chain, bytes32(hash, 'event hash'));
    first ??= chain;
  }
  return { first: (first as Buffer).toString('hex'), last: chain.toString('hex') };
}
