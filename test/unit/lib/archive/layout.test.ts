import { dayStart, formatArchiveKey, isArchiveDay, nextDay, padOffset, parseArchiveKey, partitionDayPrefix, utcDay } from '../../../../lib/archive/layout.ts';
import { errorCode } from '../../../../lib/errors.ts';

describe('archive layout', () => {
  const name = { prefix: 'audit-events', day: '2026-12-01', partition: 11, firstOffset: 1200, lastOffset: 1299 };

  it('names a file dt=/p=/first-last with offsets padded to 20 digits, and parses it back', () => {
    const key = formatArchiveKey(name);
    expect(key).toBe('audit-events/dt=2026-12-01/p=11/00000000000000001200-00000000000000001299.avro');
    expect(parseArchiveKey(key)).toEqual(name);
    expect(parseArchiveKey(formatArchiveKey({ ...name, prefix: 'tests/run-1/audit-events' }))).toEqual({ ...name, prefix: 'tests/run-1/audit-events' });
    expect(formatArchiveKey({ ...name, firstOffset: 0, lastOffset: 0 })).toBe('audit-events/dt=2026-12-01/p=11/00000000000000000000-00000000000000000000.avro');
  });

  it('sorts the keys of a folder in offset order', () => {
    const keys = [5, 100, 20, 9_000_000_000].map((first) => formatArchiveKey({ ...name, firstOffset: first, lastOffset: first + 4 }));
    expect([...keys].sort().map((k) => parseArchiveKey(k)?.firstOffset)).toEqual([5, 20, 100, 9_000_000_000]);
  });

  it.each([
    'audit-events/dt=2026-12-01/p=11/1200-1299.avro',
    'audit-events/dt=2026-13-01/p=1/00000000000000001200-00000000000000001299.avro',
    'audit-events/dt=2026-02-30/p=1/00000000000000001200-00000000000000001299.avro',
    'audit-events/dt=2026-12-01/p=01/00000000000000001200-00000000000000001299.avro',
    'audit-events/dt=2026-12-01/p=1/00000000000000001299-00000000000000001200.avro',
    'audit-events/dt=2026-12-01/p=1/00000000000000001200-00000000000000001299.avro.tmp',
    'dt=2026-12-01/p=1/00000000000000001200-00000000000000001299.avro',
  ])('does not take %s for an archive file', (key) => {
    expect(parseArchiveKey(key)).toBeUndefined();
  });

  it('refuses what cannot be named', () => {
    expect(errorCode(catching(() => formatArchiveKey({ ...name, lastOffset: 1199 })))).toBe('ARCHIVE_OFFSET_INVALID');
    expect(errorCode(catching(() => formatArchiveKey({ ...name, day: '2026-12-32' })))).toBe('ARCHIVE_DAY_INVALID');
    expect(errorCode(catching(() => formatArchiveKey({ ...name, prefix: 'audit-events/' })))).toBe('ARCHIVE_PREFIX_INVALID');
    expect(errorCode(catching(() => padOffset(-1)))).toBe('ARCHIVE_OFFSET_INVALID');
    expect(partitionDayPrefix('audit-events', '2026-12-01', 0)).toBe('audit-events/dt=2026-12-01/p=0/');
  });

  it('assigns days in UTC: 23:59:59.999 and 00:00:00.000 are different days', () => {
    expect(utcDay(Date.parse('2026-12-01T23:59:59.999Z'))).toBe('2026-12-01');
    expect(utcDay(Date.parse('2026-12-02T00:00:00.000Z'))).toBe('2026-12-02');
    expect(dayStart('2026-12-02')).toBe(Date.parse('2026-12-02T00:00:00.000Z'));
    expect(nextDay('2026-12-31')).toBe('2027-01-01');
    expect(nextDay('2028-02-28')).toBe('2028-02-29');
    expect(isArchiveDay('2027-02-29')).toBe(false);
  });
});

function catching(f: () => unknown): unknown {
  try {
    f();
  } catch (error) {
    return error;
  }
  return undefined;
}
