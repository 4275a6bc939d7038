import { Histogram, Registry } from 'prom-client';
import { batchedHistogram, RecordTimer } from '../../../../lib/runtime/batched-histogram.ts';

function histogramPair() {
  const registry = new Registry();
  const buckets = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5];
  const direct = new Histogram({ name: 'direct_seconds', help: 'h', labelNames: ['topic'], buckets, registers: [registry] });
  const batched = new Histogram({ name: 'batched_seconds', help: 'h', labelNames: ['topic'], buckets, registers: [registry] });
  return { registry, direct, batched };
}

/** The exposition of one histogram with its name replaced, to compare two of them line by line. */
async function exposition(registry: Registry, name: string): Promise<string> {
  const text = await registry.getSingleMetricAsString(name);
  return text.replaceAll(name, 'h');
}

describe('batched histogram', () => {
  it('exposes exactly what observing each value through prom-client exposes', async () => {
    const { registry, direct, batched } = histogramPair();
    const recorder = batchedHistogram(batched, { topic: 'agent-requests' });
    const values = [0, 0.0001, 0.0005, 0.00050001, 0.003, 0.02, 0.07, 0.3, 0.9, 2, 7, 100];
    for (let round = 0; round < 3; round++) {
      for (const value of values) {
        direct.labels('agent-requests').observe(value);
        recorder.observe(value);
      }
      recorder.flush();
      expect(await exposition(registry, 'batched_seconds')).toBe(await exposition(registry, 'direct_seconds'));
    }
  });

  it('keeps series of other labels and other recorders apart, and survives a reset', async () => {
    const { registry, direct, batched } = histogramPair();
    const a = batchedHistogram(batched, { topic: 'a' });
    const b = batchedHistogram(batched, { topic: 'b' });
    a.observe(0.002);
    b.observe(0.2);
    b.observe(0.3);
    a.flush();
    b.flush();
    direct.labels('a').observe(0.002);
    direct.labels('b').observe(0.2);
    direct.labels('b').observe(0.3);
    expect(await exposition(registry, 'batched_seconds')).toBe(await exposition(registry, 'direct_seconds'));

    batched.reset();
    direct.reset();
    a.observe(0.04);
    a.flush();
    direct.labels('a').observe(0.04);
    expect(await exposition(registry, 'batched_seconds')).toBe(await exposition(registry, 'direct_seconds'));
  });

  it('adds to a series another writer already filled, and flushes nothing when nothing was observed', async () => {
    const { registry, direct, batched } = histogramPair();
    batched.labels('t').observe(0.01);
    direct.labels('t').observe(0.01);
    const recorder = batchedHistogram(batched, { topic: 't' });
    recorder.flush();
    recorder.observe(0.6);
    recorder.flush();
    direct.labels('t').observe(0.6);
    expect(await exposition(registry, 'batched_seconds')).toBe(await exposition(registry, 'direct_seconds'));
  });
});

/** Equal to within floating-point noise, element by element. */
function expectClose(actual: readonly number[], expected: readonly number[]) {
  expect(actual).toHaveLength(expected.length);
  actual.forEach((value, i) => expect(value).toBeCloseTo(expected[i] ?? Number.NaN, 12));
}

describe('record timer', () => {
  /** A histogram that remembers what it was given, and a clock the test moves. */
  function setup(firstBound = 0.0005) {
    const observed: number[] = [];
    const groups: Array<[number, number]> = [];
    const histogram = {
      firstBound,
      observe: (value: number) => void observed.push(value),
      observeGroup: (count: number, total: number) => void groups.push([count, total]),
      flush: () => undefined,
    };
    let clock = 1_000;
    const timer = new RecordTimer(histogram, firstBound, () => clock);
    const tick = (ms: number) => (clock += ms);
    const count = () => observed.length + groups.reduce((n, [c]) => n + c, 0);
    const sum = () => observed.reduce((a, b) => a + b, 0) + groups.reduce((a, [, t]) => a + t, 0);
    return { timer, tick, observed, groups, count, sum };
  }

  it('times fast records in groups, each group exactly in the first bucket, with the exact sum', () => {
    const { timer, tick, observed, groups, count, sum } = setup();
    timer.start();
    for (let i = 0; i < 1 + 8 * 3; i++) {
      tick(0.002); // 2 µs per record
      timer.succeeded();
    }
    timer.pause();
    expectClose(observed, [0.000002]); // the first record of a batch, on its own
    expect(groups.map(([c]) => c)).toEqual([8, 8, 8]);
    expect(count()).toBe(25);
    expect(sum()).toBeCloseTo(25 * 0.000002, 12);
  });

  it('times slow records one by one (exact), and a 0.1 ms record in groups that stay within half the first bucket', () => {
    const { timer, tick, observed, groups } = setup();
    timer.start();
    for (const ms of [2, 0.7, 3]) {
      tick(ms);
      timer.succeeded();
    }
    expectClose(observed, [0.002, 0.0007, 0.003]);
    expect(groups).toEqual([]);
    for (let i = 0; i < 5; i++) {
      tick(0.1);
      timer.succeeded();
    }
    timer.pause();
    // 0.1 ms alone, then groups of two (0.2 ms ≤ 0.25 ms).
    expectClose(observed.slice(3), [0.0001]);
    expect(groups.map(([c]) => c)).toEqual([2, 2]);
  });

  it('estimates only a group holding one record much slower than the recent ones, keeping count and sum exact', () => {
    const { timer, tick, observed, groups, count, sum } = setup();
    timer.start();
    tick(0.001);
    timer.succeeded(); // alone: 1 µs, next group of 8
    for (let i = 0; i < 7; i++) {
      tick(0.001);
      timer.succeeded();
    }
    tick(5); // the eighth of the group takes 5 ms
    timer.succeeded();
    expect(groups).toEqual([]);
    expect(observed).toHaveLength(1 + 8);
    expectClose(observed.slice(1, 8), Array.from({ length: 7 }, () => 0.000001));
    expect(observed[8]).toBeCloseTo(0.005, 12); // exactly the slow record's own time here
    expect(count()).toBe(9);
    expect(sum()).toBeCloseTo(0.000001 * 8 + 0.005, 12);
    // Then one by one until records are fast again.
    tick(4);
    timer.succeeded();
    expect(observed.at(-1)).toBeCloseTo(0.004, 12);
  });

  it('leaves a failed attempt’s time out of the records before it, and heartbeats out of everything', () => {
    const { timer, tick, observed, groups, count } = setup();
    timer.start();
    tick(0.001);
    timer.succeeded();
    tick(0.001);
    timer.succeeded(); // pending in a group of 8
    tick(30); // the next record fails after 30 ms
    timer.failed();
    expect(count()).toBe(2);
    expect(groups).toEqual([]);
    expectClose(observed, [0.000001, 0.000001]);
    tick(100); // dead-lettering
    timer.resume();
    tick(2);
    timer.succeeded();
    timer.pause();
    tick(500); // a heartbeat
    timer.resume();
    tick(1);
    timer.succeeded();
    timer.pause();
    expectClose(observed.slice(2), [0.002, 0.001]);
  });
});
