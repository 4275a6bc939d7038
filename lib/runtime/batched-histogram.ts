import type { Histogram } from 'prom-client';

/**
 * Per-record observations of one labelled histogram series, merged into prom-client once per
 * batch. prom-client's `observe` hashes the labels and allocates on every call (about a third of a
 * microsecond); here a record costs a bucket search and two additions, and a batch one merge.
 * The exposition is the same as observing each value (a unit test compares both).
 */
export interface BatchedHistogram {
  /** Adds one observation, in the histogram's unit. */
  observe(value: number): void;
  /** Adds `count` observations that are each at most the first bucket's bound and together `total`. */
  observeGroup(count: number, total: number): void;
  /** The first bucket's upper bound. */
  readonly firstBound: number;
  /** Merges what was observed since the last flush into the prom-client histogram. */
  flush(): void;
}

/** The part of prom-client's Histogram internals the merge relies on (checked before use). */
interface SeriesValues {
  labels: Record<string, string | number>;
  bucketValues: Record<string, number>;
  sum: number;
  count: number;
}
interface HistogramInternals {
  upperBounds?: unknown;
  hashMap?: unknown;
  enableExemplars?: unknown;
}

const sameLabels = (a: Record<string, string | number>, b: Record<string, string | number>) => {
  const keys = Object.keys(b);
  return Object.keys(a).length === keys.length && keys.every((k) => String(a[k]) === String(b[k]));
};

const isSeries = (value: unknown): value is SeriesValues => {
  const v = value as Partial<SeriesValues> | null;
  return typeof v === 'object' && v !== null && typeof v.sum === 'number' && typeof v.count === 'number' && typeof v.bucketValues === 'object' && typeof v.labels === 'object';
};

/**
 * The per-record side keeps everything in one Float64Array (bucket counts, then the sum, then the
 * count): number fields of closures or objects would box a new heap number on every update.
 */
class Accumulator implements BatchedHistogram {
  readonly #bounds: Float64Array;
  /** [count per bucket…, sum, count] since the last flush. */
  readonly #values: Float64Array;
  readonly #merge: (values: Float64Array) => boolean;
  readonly #observeOne: (value: number) => void;
  #direct = false;

  constructor(bounds: readonly number[], merge: (values: Float64Array) => boolean, observeOne: (value: number) => void) {
    this.#bounds = Float64Array.from(bounds);
    this.#values = new Float64Array(bounds.length + 2);
    this.#merge = merge;
    this.#observeOne = observeOne;
  }

  get firstBound(): number {
    return this.#bounds[0] ?? Number.POSITIVE_INFINITY;
  }

  observeGroup(count: number, total: number): void {
    if (this.#direct) {
      for (let i = 0; i < count; i++) this.#observeOne(total / count);
      return;
    }
    const values = this.#values;
    const n = this.#bounds.length;
    values[n] = (values[n] as number) + total;
    values[n + 1] = (values[n + 1] as number) + count;
    values[0] = (values[0] as number) + count;
  }

  observe(value: number): void {
    if (this.#direct) return this.#observeOne(value);
    const bounds = this.#bounds;
    const values = this.#values;
    const n = bounds.length;
    values[n] = (values[n] as number) + value;
    values[n + 1] = (values[n + 1] as number) + 1;
    for (let i = 0; i < n; i++) {
      if (value <= (bounds[i] as number)) {
        values[i] = (values[i] as number) + 1;
        return;
      }
    }
    // Above the last bound: only in +Inf (the count), as prom-client does.
  }

  flush(): void {
    const values = this.#values;
    if (values[this.#bounds.length + 1] === 0) return;
    // When prom-client's shape is not the one expected, observe through its API from now on (this batch's values are dropped).
    if (!this.#merge(values)) this.#direct = true;
    values.fill(0);
  }
}

export function batchedHistogram<T extends string>(histogram: Histogram<T>, labels: Partial<Record<T, string | number>>): BatchedHistogram {
  const internals = histogram as unknown as HistogramInternals;
  const bounds = internals.upperBounds;
  const usable =
    Array.isArray(bounds) && bounds.every((b) => typeof b === 'number') && typeof internals.hashMap === 'object' && internals.hashMap !== null && internals.enableExemplars !== true;
  const child = histogram.labels(labels);
  if (!usable) {
    const firstBound = Array.isArray(bounds) && typeof bounds[0] === 'number' ? bounds[0] : Number.POSITIVE_INFINITY;
    return {
      firstBound,
      observe: (value) => child.observe(value),
      observeGroup: (count, total) => {
        for (let i = 0; i < count; i++) child.observe(total / count);
      },
      flush: () => undefined,
    };
  }

  const upperBounds = bounds;
  const wanted = labels as Record<string, string | number>;
  const find = (map: Record<string, unknown>) => {
    for (const key in map) {
      const candidate = map[key];
      if (isSeries(candidate) && sameLabels(candidate.labels, wanted)) return candidate;
    }
    return undefined;
  };
  let cached: SeriesValues | undefined;

  /** The live series of these labels, created the way prom-client does on first use (or after a reset). */
  function series(): SeriesValues | undefined {
    const map = internals.hashMap as Record<string, unknown> | undefined;
    if (map === undefined) return undefined;
    // The cached series is still the live one unless the histogram was reset or the series removed.
    if (cached !== undefined && Object.values(map).includes(cached)) return cached;
    cached = find(map);
    if (cached === undefined) {
      histogram.zero(labels);
      cached = find(map);
    }
    return cached;
  }

  function merge(values: Float64Array): boolean {
    const target = series();
    if (target === undefined || upperBounds.some((b) => typeof target.bucketValues[b] !== 'number')) return false;
    const n = upperBounds.length;
    target.sum += values[n] as number;
    target.count += values[n + 1] as number;
    for (let i = 0; i < n; i++) {
      const added = values[i] as number;
      if (added !== 0) target.bucketValues[upperBounds[i] as number] = (target.bucketValues[upperBounds[i] as number] ?? 0) + added;
    }
    return true;
  }

  return new Accumulator(upperBounds, merge, (value) => child.observe(value));
}

/**
 * Handler latencies with few clock reads (a clock read costs about as much as the rest of the
 * runtime's per-record work). Consecutive successful records are timed as a group whose size is
 * chosen so that the group should take at most half of the histogram's first bucket (0.5 ms by
 * default): a record of a microsecond is timed in groups of up to 8, a record of 0.3 ms on its own.
 *
 * - A group that took no longer than the first bucket's bound puts every record there and adds its
 *   time to the sum: exact, since no record of it can have taken longer than the whole group.
 * - A record timed on its own is exact.
 * - The one estimate: a group that took longer than the first bound (a record far slower than the
 *   ones before it). The sum stays exact; the others count at the recent per-record time and the
 *   slow one gets the rest. Records are then timed one by one until they are fast again.
 * - A group cut short by a failed record (whose time is in the group's): its records count at the
 *   recent per-record time, and the failed attempt's time in no success's.
 */
export class RecordTimer {
  static readonly MAX_GROUP = 8;
  readonly #histogram: BatchedHistogram;
  /** The first bucket's upper bound, in seconds. */
  readonly #fast: number;
  readonly #now: () => number;
  /** When the records not yet timed started (ms). */
  #mark = 0;
  #untimed = 0;
  #group = 1;
  /** The latest per-record time (s). */
  #recent = 0;

  constructor(histogram: BatchedHistogram, firstBoundSeconds: number, now: () => number = () => performance.now()) {
    this.#histogram = histogram;
    this.#fast = firstBoundSeconds;
    this.#now = now;
  }

  /** When the records not yet timed started (ms); a heartbeat check reads it. */
  get mark(): number {
    return this.#mark;
  }

  /** A batch starts: its first record starts now, timed on its own. */
  start(): void {
    this.#mark = this.#now();
    this.#untimed = 0;
    this.#group = 1;
  }

  /** A record was handled. */
  succeeded(): void {
    if (++this.#untimed >= this.#group) this.#time(false);
  }

  /** A record failed: the records handled before it are timed now (without its time). */
  failed(): void {
    this.#time(true);
  }

  /** Something that is no record's work follows (a heartbeat, the end of the batch): time what is pending; `resume` restarts the clock. */
  pause(): void {
    if (this.#untimed > 0) this.#time(false);
  }

  resume(): void {
    this.#mark = this.#now();
  }

  #time(endsWithFailure: boolean): void {
    const now = this.#now();
    const n = this.#untimed;
    const seconds = (now - this.#mark) / 1000;
    this.#mark = now;
    this.#untimed = 0;
    if (n === 0) return;
    const histogram = this.#histogram;
    if (endsWithFailure) {
      // The failed attempt's time is in `seconds`: the records before it count at the recent pace (at most their share).
      const each = Math.min(this.#recent, seconds / n);
      for (let i = 0; i < n; i++) histogram.observe(each);
      this.#group = 1;
      return;
    }
    if (n === 1 || seconds <= this.#fast) {
      const each = seconds / n;
      if (n === 1) histogram.observe(seconds);
      else histogram.observeGroup(n, seconds);
      this.#recent = each;
    } else {
      // One record far slower than the recent ones: the others at the recent pace, the slow one the rest.
      const others = Math.min(this.#recent, seconds / n);
      for (let i = 1; i < n; i++) histogram.observe(others);
      histogram.observe(seconds - others * (n - 1));
      this.#recent = seconds / n;
    }
    // The next group should take at most half of the first bucket.
    const perRecord = this.#recent;
    this.#group = perRecord <= 0 ? RecordTimer.MAX_GROUP : Math.max(1, Math.min(RecordTimer.MAX_GROUP, Math.floor(this.#fast / 2 / perRecord)));
  }
}
