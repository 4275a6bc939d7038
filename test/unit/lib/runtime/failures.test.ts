import { Gauge, Registry } from 'prom-client';
import { FailureLedger } from '../../../../lib/runtime/failures.ts';

function ledger() {
  const gauge = new Gauge({ name: 'blocked', help: 'blocked', labelNames: ['topic', 'dependency'] as const, registers: [new Registry()] });
  const blocked = async () => Object.fromEntries((await gauge.get()).values.map((v) => [String(v.labels.dependency), v.value]));
  return { failures: new FailureLedger(gauge, 't'), blocked };
}

describe('FailureLedger', () => {
  it('keeps a record’s attempt count across a rebalance (the offset guards a stale entry)', () => {
    const { failures } = ledger();
    failures.entryFor(0, '10').attempts = 3;
    failures.reassigned([1]);
    failures.reassigned([0, 1]);
    expect(failures.head(0)).toMatchObject({ offset: '10', attempts: 3 });
    // Another record at the head of the partition starts afresh.
    expect(failures.entryFor(0, '11').attempts).toBe(0);
  });

  it('counts partitions waiting per dependency, and a wait ends on success, on revocation and on stop', async () => {
    const { failures, blocked } = ledger();
    expect(failures.wait(0, 'postgres')).toBe(true);
    expect(failures.wait(0, 'postgres')).toBe(false);
    failures.wait(1, 'postgres');
    failures.wait(2, 'redis');
    expect(await blocked()).toEqual({ postgres: 2, redis: 1 });
    failures.wait(2, 'postgres');
    expect(await blocked()).toEqual({ postgres: 3, redis: 0 });
    failures.clear(0);
    failures.reassigned([2]);
    expect(await blocked()).toEqual({ postgres: 1, redis: 0 });
    failures.endAllWaits();
    expect(await blocked()).toEqual({ postgres: 0, redis: 0 });
  });
});
