import type { ConsumerClient, TopicPartitionOffset } from '../../../../lib/kafka/types.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { PartitionOffsets } from '../../../../lib/runtime/offsets.ts';

function consumer(commits: TopicPartitionOffset[][]): ConsumerClient {
  const nothing = () => undefined;
  return {
    connect: () => Promise.resolve(),
    subscribe: () => Promise.resolve(),
    run: () => Promise.resolve(),
    commit: (offsets) => {
      commits.push([...offsets]);
      return Promise.resolve();
    },
    pause: nothing,
    resume: nothing,
    seek: nothing,
    onAssignment: nothing,
    disconnect: () => Promise.resolve(),
  };
}

describe('PartitionOffsets', () => {
  const log = createLogger('test', 'silent');

  it('commits the handled position when no limit is set', async () => {
    const commits: TopicPartitionOffset[][] = [];
    const offsets = new PartitionOffsets(consumer(commits), 't', 1000, log);
    offsets.handled(0, 10n, false);
    await offsets.flush();
    expect(commits).toEqual([[{ topic: 't', partition: 0, offset: '10' }]]);
    expect(offsets.position(0)).toBe(10n);
  });

  it('reads past a commit limit but commits no further, until it is raised', async () => {
    const commits: TopicPartitionOffset[][] = [];
    const offsets = new PartitionOffsets(consumer(commits), 't', 1000, log);
    offsets.limit(0, 3n);
    offsets.handled(0, 10n, false);
    expect(offsets.position(0)).toBe(10n);
    await offsets.flush();
    // The limit holds for the next batch (say, all dead-lettered) until raised.
    offsets.handled(0, 20n, false);
    await offsets.flush();
    // Raised outside a batch: commits min(limit, handled) at once.
    offsets.limit(0, 25n, 20n);
    await offsets.flush();
    expect(commits).toEqual([[{ topic: 't', partition: 0, offset: '3' }], [{ topic: 't', partition: 0, offset: '20' }]]);
  });

  it('never moves a commit back', async () => {
    const commits: TopicPartitionOffset[][] = [];
    const offsets = new PartitionOffsets(consumer(commits), 't', 1000, log);
    offsets.handled(1, 10n, false);
    offsets.limit(1, 5n, 10n);
    await offsets.flush();
    expect(commits).toEqual([[{ topic: 't', partition: 1, offset: '10' }]]);
  });
});
