import { dayStart, utcDay } from '../../../../lib/archive/layout.ts';
import { createArchiverWorld, expectExactlyOnce, waitFor, type ArchiverWorld } from './world.ts';

// 20,000 audit events across the partitions and two days, archived by one `run archiver` process:
// every event exactly once in S3 (read back with the project's reader) and once in the index, each
// in the day folder of its record timestamp, and the earlier day closed on every partition. The
// audit topic is CreateTime here (the real one is LogAppendTime) so records can carry yesterday's
// time; an event at 23:59:59.999 and the next at 00:00:00.000 on the same partition land in
// different days.
jest.setTimeout(240_000);

const PER_DAY = 10_000;

describe('archiver: 20,000 events over two days, every one exactly once', () => {
  let w: ArchiverWorld;

  beforeAll(async () => {
    w = await createArchiverWorld('archiver-vol', { createTime: true, env: { ARCHIVE_MAX_FILE_RECORDS: '1000' } });
  });

  afterAll(async () => {
    await w?.teardown();
  });

  it('archives and indexes every event once, in the day of its timestamp; the day boundary splits days; the first day closes', async () => {
    const today = utcDay(Date.now());
    const midnight = dayStart(today);
    const yesterday = utcDay(midnight - 1);
    // Every record of a day within one minute (one flush window), so files are cut by count and day.
    const timestamps = new Map<string, number>();
    const stamp = (ids: string[], at: (i: number) => number) => ids.forEach((id, i) => timestamps.set(id, at(i)));
    const beforeMidnight = (i: number) => midnight - 60_000 + (i % 59_999);
    const afterMidnight = (i: number) => midnight + (i % 60_000);
    stamp(await w.produceEvents(PER_DAY - 1, { timestamp: beforeMidnight }), beforeMidnight);
    const [last] = await w.produceEvents(1, { partition: 0, timestamp: () => midnight - 1 });
    const [first] = await w.produceEvents(1, { partition: 0, timestamp: () => midnight });
    if (last === undefined || first === undefined) throw new Error('boundary events not produced');
    timestamps.set(last, midnight - 1);
    timestamps.set(first, midnight);
    stamp(await w.produceEvents(PER_DAY - 1, { timestamp: afterMidnight }), afterMidnight);
    expect(w.produced.size).toBe(2 * PER_DAY);

    w.startArchiver();
    await waitFor(async () => (await w.filedCount()) >= w.produced.size, 180_000, 'every event in a durable file');
    await waitFor(async () => (await w.indexCount()) >= w.produced.size, 30_000, 'every event indexed');

    const events = await w.archived();
    expectExactlyOnce(events, w.produced);
    expect(new Set(events.map((e) => e.partition)).size).toBeGreaterThan(1);
    for (const e of events) {
      expect([e.eventId, e.timestamp]).toEqual([e.eventId, timestamps.get(e.eventId)]);
      expect([e.eventId, e.day]).toEqual([e.eventId, utcDay(e.timestamp)]);
    }
    expect(events.filter((e) => e.day === yesterday)).toHaveLength(PER_DAY);
    expect(events.filter((e) => e.day === today)).toHaveLength(PER_DAY);

    // The boundary: consecutive offsets of partition 0, in two day folders.
    const before = events.find((e) => e.eventId === last);
    const after = events.find((e) => e.eventId === first);
    expect(before).toEqual(expect.objectContaining({ partition: 0, day: yesterday, timestamp: midnight - 1 }));
    expect(after).toEqual(expect.objectContaining({ partition: 0, day: today, offset: (before?.offset ?? NaN) + 1, timestamp: midnight }));
    expect(before?.file).toContain(`/dt=${yesterday}/p=0/`);
    expect(after?.file).toContain(`/dt=${today}/p=0/`);

    // The index: every event once, at its place on the topic.
    const { rows } = await w.db.query<{ event_id: string; kafka_partition: number; kafka_offset: string }>(`SELECT event_id, kafka_partition, kafka_offset FROM ${w.world.schema}.audit_index`);
    expect(rows).toHaveLength(w.produced.size);
    const place = new Map(events.map((e) => [e.eventId, `${e.partition}:${e.offset}`]));
    for (const r of rows) expect([r.event_id, `${r.kafka_partition}:${r.kafka_offset}`]).toEqual([r.event_id, place.get(r.event_id)]);

    // Yesterday closed on every partition (today's records came), with its files and counts.
    await waitFor(
      async () => (await w.db.query(`SELECT 1 FROM ${w.world.schema}.audit_days WHERE day = $1::date`, [yesterday])).rowCount === 1,
      30_000,
      'yesterday closed',
    );
    const closed = await w.db.query<{ partition_count: number; file_count: number; record_count: string }>(
      `SELECT partition_count, file_count, record_count FROM ${w.world.schema}.audit_days WHERE day = $1::date`,
      [yesterday],
    );
    expect(closed.rows[0]).toEqual({ partition_count: 4, file_count: new Set(events.filter((e) => e.day === yesterday).map((e) => e.file)).size, record_count: String(PER_DAY) });
    expect((await w.db.query(`SELECT 1 FROM ${w.world.schema}.audit_days WHERE day = $1::date`, [today])).rowCount).toBe(0);
    expect(await w.dlqCount()).toBe(0);
  });
});
