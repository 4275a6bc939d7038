/**
 * Leader election: one process of a service at a time runs singleton work (the provisioner's
 * reconciler). Two implementations share this interface: a Postgres lease (the default) and a
 * Kubernetes `coordination.k8s.io/v1` Lease (in a cluster).
 *
 * The fencing token grows with every change of holder; work done as leader carries it, so a
 * deposed leader that has not noticed yet can be told apart from the current one.
 */
import type { LeaderFence } from './fence.ts';

export type { LeaderFence } from './fence.ts';

export interface LeadershipState {
  readonly leader: boolean;
  /** Present while leader. */
  readonly fencingToken: number | null;
}

export interface LeaderElector {
  /** The identity this process competes as (pod name, or host:pid). */
  readonly identity: string;
  /** Begins competing; renews while leader. */
  start(): void;
  /** Stops competing and releases the lease when held (so a successor takes over at once). */
  stop(): Promise<void>;
  state(): LeadershipState;
  /**
   * The current term's fence while leader (null otherwise): what side effects carry and check in
   * Postgres (`assertFence`), so a deposed leader that has not noticed yet is refused.
   */
  fence(): LeaderFence | null;
  /** Called on every change of leadership. */
  onChange(listener: (state: LeadershipState) => void): void;
}

export interface LeaseTiming {
  /** How long a lease lasts without renewal. */
  readonly leaseDurationMs: number;
  /** How often the holder renews and others retry (well under the duration). */
  readonly renewIntervalMs: number;
}

export const DEFAULT_LEASE_TIMING: LeaseTiming = { leaseDurationMs: 15_000, renewIntervalMs: 5_000 };
