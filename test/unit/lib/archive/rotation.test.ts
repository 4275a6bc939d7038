import { FileRotation, windowStartOf, type Cut, type RotationLimits, type RotationRecord } from '../../../../lib/archive/rotation.ts';

const limits: RotationLimits = { flushIntervalMs: 60_000, maxRecords: 5, maxBytes: 1_000, windowGraceMs: 5_000 };
const T = Date.parse('2026-12-01T10:00:00.000Z');

function rec(offset: number, timestamp: number, bytes = 10, schemaId = 1): RotationRecord {
  return { offset, timestamp, bytes, schemaId };
}

const ranges = (cuts: Cut[]) => cuts.map((c) => `${c.reason}:${c.file.firstOffset}-${c.file.lastOffset}`);

/** Every cut of a run of records, then what is left open. */
function run(records: RotationRecord[], rotation = new FileRotation(limits)): string[] {
  return [...records.flatMap((r) => ranges(rotation.add(r))), ...(rotation.open ? [`open:${rotation.open.firstOffset}-${rotation.open.lastOffset}`] : [])];
}

describe('archive file rotation', () => {
  it('cuts a file at the record count', () => {
    expect(run(Array.from({ length: 12 }, (_, i) => rec(i, T + i)))).toEqual(['count:0-4', 'count:5-9', 'open:10-11']);
  });

  it('cuts a file at the byte size, the record that reaches it included', () => {
    expect(run([rec(0, T, 400), rec(1, T + 1, 400), rec(2, T + 2, 300), rec(3, T + 3, 10)])).toEqual(['size:0-2', 'open:3-3']);
  });

  it('cuts when a record falls in the next flush window of record time (ARCHIVE_FLUSH_INTERVAL_MS)', () => {
    expect(run([rec(0, T + 1_000), rec(1, T + 59_999), rec(2, T + 60_000), rec(3, T + 185_000)])).toEqual(['window:0-1', 'window:2-2', 'open:3-3']);
    expect(windowStartOf(T + 59_999, 60_000)).toBe(T);
  });

  it('cuts when the writer schema changes', () => {
    expect(run([rec(0, T, 10, 1), rec(1, T, 10, 1), rec(2, T, 10, 2), rec(3, T, 10, 1)])).toEqual(['schema:0-1', 'schema:2-2', 'open:3-3']);
  });

  it('puts 23:59:59.999 and 00:00:00.000 in different days, and so different files', () => {
    const rotation = new FileRotation({ ...limits, flushIntervalMs: 7 * 60_000 }); // 7 min does not divide a day: a window straddles midnight
    const before = Date.parse('2026-12-01T23:59:59.999Z');
    expect(ranges(rotation.add(rec(0, before)))).toEqual([]);
    expect(rotation.open?.day).toBe('2026-12-01');
    expect(ranges(rotation.add(rec(1, before + 1)))).toEqual(['day:0-0']);
    expect(rotation.open?.day).toBe('2026-12-02');
  });

  it('cuts the same files whoever reads the partition from a file boundary (a restart, a zombie)', () => {
    const records = Array.from({ length: 40 }, (_, i) => rec(100 + i * 2, T + i * 7_000, 10 + (i % 3) * 200, i < 30 ? 1 : 2));
    const all = run(records);
    // Resuming after each file the first run cut gives the same following files.
    for (const cut of all.filter((c) => !c.startsWith('open'))) {
      const last = Number(cut.split('-')[1]);
      const rest = records.filter((r) => r.offset > last);
      expect(run(rest)).toEqual(all.slice(all.indexOf(cut) + 1));
    }
  });

  it('cuts the last file of an idle partition only when caught up and past its window plus the grace', () => {
    const rotation = new FileRotation(limits);
    rotation.add(rec(0, T + 10_000));
    rotation.add(rec(1, T + 20_000));
    expect(rotation.tick(T + 64_999, true)).toEqual([]);
    expect(rotation.tick(T + 120_000, false)).toEqual([]);
    expect(ranges(rotation.tick(T + 65_000, true))).toEqual(['idle:0-1']);
    expect(rotation.tick(T + 300_000, true)).toEqual([]);
  });

  it('never puts a record in a day before the partition\'s last one (a broker clock stepping back)', () => {
    const rotation = new FileRotation(limits, '2026-12-02');
    rotation.add(rec(0, Date.parse('2026-12-01T23:59:59.000Z')));
    expect(rotation.open?.day).toBe('2026-12-02');
    const later = new FileRotation(limits);
    later.add(rec(0, Date.parse('2026-12-02T00:00:01.000Z')));
    expect(ranges(later.add(rec(1, Date.parse('2026-12-01T23:59:59.000Z'))))).toEqual(['window:0-0']);
    expect(later.open?.day).toBe('2026-12-02');
    later.advanceDay('2026-12-03');
    expect(later.dayOf(Date.parse('2026-12-02T12:00:00Z'))).toBe('2026-12-03');
  });
});
