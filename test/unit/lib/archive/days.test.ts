import { dayClosed, daysBetween, PartitionDays } from '../../../../lib/archive/days.ts';
import { utcDay } from '../../../../lib/archive/layout.ts';

const GRACE = 5 * 60_000;

describe('archive days', () => {
  it('closes a partition\'s day when a record of a later day arrives', () => {
    const days = new PartitionDays(GRACE);
    expect(days.record(utcDay(Date.parse('2026-12-01T23:59:59.999Z')))).toEqual([]);
    expect(days.openDay).toBe('2026-12-01');
    expect(days.record('2026-12-01')).toEqual([]);
    expect(days.record(utcDay(Date.parse('2026-12-02T00:00:00.000Z')))).toEqual(['2026-12-01']);
    expect(days.openDay).toBe('2026-12-02');
  });

  it('closes the days in between, which had no record on the partition', () => {
    const days = new PartitionDays(GRACE, '2026-12-30');
    expect(days.record('2027-01-02')).toEqual(['2026-12-30', '2026-12-31', '2027-01-01']);
    expect(daysBetween('2026-12-01', '2026-12-01')).toEqual([]);
  });

  it('closes the day of an idle, caught-up partition once the clock passes the day plus the grace', () => {
    const days = new PartitionDays(GRACE, '2026-12-01');
    const end = Date.parse('2026-12-02T00:00:00.000Z');
    expect(days.tick(end + GRACE - 1, true)).toEqual([]);
    expect(days.tick(end + GRACE, false)).toEqual([]); // still reading: a record of the day may come
    expect(days.tick(end + GRACE, true)).toEqual(['2026-12-01']);
    expect(days.openDay).toBe('2026-12-02');
    // Idle for days: each closes in turn.
    expect(days.tick(end + 2 * 86_400_000 + GRACE, true)).toEqual(['2026-12-02', '2026-12-03']);
    expect(days.tick(end + 2 * 86_400_000 + GRACE, true)).toEqual([]);
  });

  it('does not close by the clock a partition that never had a record', () => {
    expect(new PartitionDays(GRACE).tick(Date.now(), true)).toEqual([]);
  });

  it('closes a day when every partition has closed it', () => {
    expect(dayClosed(new Set([0, 1, 2]), 3)).toBe(true);
    expect(dayClosed(new Set([0, 2, 5]), 3)).toBe(false);
  });
});
