import { dayStart, utcDay } from '../../../../lib/archive/layout.ts';
import { createArchiverWorld, expectExactlyOnce, waitFor, type ArchiverWorld } from './world.ts';

// A partition that goes idle after yesterday's records closes yesterday by the clock (the day's end
// plus ARCHIVE_DAY_GRACE_MS), with no later record to close it; the others close it with today's
// records; then the day is closed on every partition, with its files and counts. The audit topic is
// CreateTime here so records can carry yesterday's time (the real one is LogAppendTime).
jest.setTimeout(180_000);

describe('archiver: an idle partition closes its day by the clock', () => {
  let w: ArchiverWorld;

  beforeAll(async () => {
    w = await createArchiverWorld('archiver-idle', { createTime: true, env: { ARCHIVE_DAY_GRACE_MS: '1000' } });
  });

  afterAll(async () => {
    await w?.teardown();
  });

  it('closes yesterday on the idle partition and then the day, and leaves today open', async () => {
    const today = utcDay(Date.now());
    const yesterday = utcDay(dayStart(today) - 1);
    const noonYesterday = dayStart(yesterday) + 12 * 3_600_000;
    for (let partition = 0; partition < 4; partition++) await w.produceEvents(5, { partition, timestamp: (i) => noonYesterday + i });
    // Partitions 1-3 see a record of today (which closes yesterday on them); partition 0 stays idle.
    for (let partition = 1; partition < 4; partition++) await w.produceEvents(1, { partition, timestamp: () => Math.max(dayStart(today), Date.now() - 60_000) });

    w.startArchiver();
    const schema = w.world.schema;
    await waitFor(async () => (await w.db.query(`SELECT 1 FROM ${schema}.audit_days WHERE day = $1::date`, [yesterday])).rowCount === 1, 60_000, 'yesterday closed');

    const partitionDays = await w.db.query<{ kafka_partition: number; file_count: number; record_count: string; last_offset: string }>(
      `SELECT kafka_partition, file_count, record_count, last_offset FROM ${schema}.audit_partition_days WHERE day = $1::date ORDER BY kafka_partition`,
      [yesterday],
    );
    expect(partitionDays.rows.map((r) => [r.kafka_partition, Number(r.record_count), Number(r.last_offset)])).toEqual([
      [0, 5, 4],
      [1, 5, 4],
      [2, 5, 4],
      [3, 5, 4],
    ]);
    const day = await w.db.query<{ partition_count: number; record_count: string; file_count: number }>(`SELECT partition_count, record_count, file_count FROM ${schema}.audit_days WHERE day = $1::date`, [yesterday]);
    expect(day.rows[0]).toEqual(expect.objectContaining({ partition_count: 4, record_count: '20' }));

    // Today stays open everywhere (it has not ended); partition 0 has nothing of it.
    expect((await w.db.query(`SELECT 1 FROM ${schema}.audit_partition_days WHERE day = $1::date`, [today])).rowCount).toBe(0);
    await waitFor(async () => (await w.filedCount()) >= w.produced.size, 30_000, 'every event in a durable file');
    const events = await w.archived();
    expectExactlyOnce(events, w.produced);
    expect(events.filter((e) => e.day === yesterday).map((e) => e.partition).sort()).toEqual([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3]);
    expect(events.filter((e) => e.day === today).map((e) => e.partition).sort()).toEqual([1, 2, 3]);
    expect(day.rows[0]?.file_count).toBe(new Set(events.filter((e) => e.day === yesterday).map((e) => e.file)).size);
  });
});

describe('archiver: a partition that never had a record closes the day too', () => {
  let w: ArchiverWorld;

  beforeAll(async () => {
    w = await createArchiverWorld('archiver-empty', { createTime: true, env: { ARCHIVE_DAY_GRACE_MS: '1000' } });
  });

  afterAll(async () => {
    await w?.teardown();
  });

  it('closes yesterday on every partition, the empty one with no records', async () => {
    const today = utcDay(Date.now());
    const yesterday = utcDay(dayStart(today) - 1);
    const noonYesterday = dayStart(yesterday) + 12 * 3_600_000;
    // Partition 3 gets nothing, ever.
    for (let partition = 0; partition < 3; partition++) await w.produceEvents(3, { partition, timestamp: (i) => noonYesterday + i });

    w.startArchiver();
    const schema = w.world.schema;
    await waitFor(async () => (await w.db.query(`SELECT 1 FROM ${schema}.audit_days WHERE day = $1::date`, [yesterday])).rowCount === 1, 90_000, 'yesterday closed on all partitions');
    const partitionDays = await w.db.query<{ kafka_partition: number; record_count: string }>(
      `SELECT kafka_partition, record_count FROM ${schema}.audit_partition_days WHERE day = $1::date ORDER BY kafka_partition`,
      [yesterday],
    );
    expect(partitionDays.rows.map((r) => [r.kafka_partition, Number(r.record_count)])).toEqual([
      [0, 3],
      [1, 3],
      [2, 3],
      [3, 0],
    ]);
    const day = await w.db.query<{ partition_count: number; record_count: string }>(`SELECT partition_count, record_count FROM ${schema}.audit_days WHERE day = $1::date`, [yesterday]);
    expect(day.rows[0]).toEqual(expect.objectContaining({ partition_count: 4, record_count: '9' }));
  });
});
