/**
 * The runtime's own small view of a Kafka client. Only `lib/kafka/` knows which client library
 * implements it (kafkajs today); switching clients touches nothing outside this folder.
 */
export type Headers = Record<string, string>;

/** One header as it is on the wire: headers are an ordered list, a key may repeat, a value may be absent. */
export interface RecordHeader {
  readonly key: string;
  readonly value: Buffer | null;
}

/** One record. It may be a class instance with lazy getters (headers): copy fields by name, never by spread. */
export interface KafkaRecord {
  readonly topic: string;
  readonly partition: number;
  readonly offset: string;
  readonly key: Buffer | null;
  readonly value: Buffer | null;
  readonly headers: Headers;
  /** The headers as bytes, in order (repeated keys kept); absent in clients that cannot tell (test doubles). */
  readonly headerList?: readonly RecordHeader[];
  readonly timestamp: string;
}

/**
 * Records of one partition, in offset order. Read by index: the hot path asks only for the offset
 * and the value, and a full `KafkaRecord` is made on demand (no per-record copies up front).
 */
export interface RecordBatch {
  readonly topic: string;
  readonly partition: number;
  readonly highWatermark: string;
  /** How many records the batch holds. */
  readonly size: number;
  /** The offset of record `index` (0 ≤ index < size). */
  offsetAt(index: number): string;
  /** The value of record `index`. */
  valueAt(index: number): Buffer | null;
  /** Record `index` as a `KafkaRecord`, made on each call. */
  recordAt(index: number): KafkaRecord;
}

export interface BatchControl {
  /** False once the consumer is stopping or the batch went stale (rebalance, seek): stop early. */
  isActive(): boolean;
  /** Keeps group membership alive during a long batch. */
  heartbeat(): Promise<void>;
}

export interface TopicPartitionOffset {
  readonly topic: string;
  readonly partition: number;
  /** The next offset to read (last processed + 1). */
  readonly offset: string;
}

export interface ConsumerOptions {
  readonly groupId: string;
  readonly sessionTimeoutMs?: number;
  readonly heartbeatIntervalMs?: number;
  readonly maxBytesPerPartition?: number;
  /** How long an idle fetch waits for data. Default 500 ms. */
  readonly maxWaitTimeMs?: number;
  /**
   * Partition p of every subscribed topic goes to the same member (topics keyed alike with the
   * same partition count: each key's records of all of them are handled by one member).
   */
  readonly coPartitioned?: boolean;
}

/** The end of each partition's log (ListOffsets latest), for consumers that must know they are caught up. */
export interface OffsetReader {
  /** Partition → high watermark (the offset the next record will get), as of the call. */
  latest(topic: string): Promise<ReadonlyMap<number, bigint>>;
  /** Partition → the group's committed offset (partitions without one are left out). */
  committed(groupId: string, topic: string): Promise<ReadonlyMap<number, bigint>>;
  close(): Promise<void>;
}

export interface ConsumerClient {
  connect(): Promise<void>;
  subscribe(topics: readonly string[], fromBeginning: boolean): Promise<void>;
  /**
   * Starts the fetch loop; `onBatch` runs for up to `concurrency` partitions at once, in order within
   * one, and resolves with the offset of the last record it handled (fetching goes on after it).
   */
  run(options: { concurrency: number; onBatch: (batch: RecordBatch, control: BatchControl) => Promise<string | undefined> }): Promise<void>;
  commit(offsets: readonly TopicPartitionOffset[]): Promise<void>;
  /** Pauses fetching `partitions` of `topic`, or the whole topic when omitted. */
  pause(topic: string, partitions?: readonly number[]): void;
  resume(topic: string, partitions?: readonly number[]): void;
  /** Next fetch of the partition starts at `offset`. */
  seek(topic: string, partition: number, offset: string): void;
  /** Called with the partitions this member owns after every rebalance. */
  onAssignment(listener: (assignment: Record<string, number[]>) => void): void;
  /** Called when a rebalance starts (what this member owns may already be another's). */
  onRebalancing?(listener: () => void): void;
  /** Stops fetching and waits for in-flight batches to return, then leaves the group. */
  disconnect(): Promise<void>;
}

export interface OutgoingRecord {
  readonly key: string | Buffer | null;
  readonly value: Buffer | null;
  readonly headers?: Headers;
  /** Headers as bytes, in order (a key may repeat, a value may be absent); when given, `headers` is ignored. */
  readonly headerList?: readonly RecordHeader[];
  /** An explicit partition (a replay keeps each record's partition); default: by key. */
  readonly partition?: number;
}

export interface ProducerClient {
  connect(): Promise<void>;
  /** Idempotent, acks from all in-sync replicas. */
  send(topic: string, records: readonly OutgoingRecord[]): Promise<void>;
  /** Several topics' records in one produce request (order kept within each topic). */
  sendMany(batches: readonly { readonly topic: string; readonly records: readonly OutgoingRecord[] }[]): Promise<void>;
  disconnect(): Promise<void>;
}

export interface KafkaClient {
  consumer(options: ConsumerOptions): ConsumerClient;
  producer(): ProducerClient;
  /** A reader of the partitions' end offsets (absent in test doubles). */
  offsetReader?(): OffsetReader;
  /** A connectivity probe for readiness checks. */
  ping(timeoutMs: number): Promise<boolean>;
}
