import { SchemaRegistry, SchemaType } from '@kafkajs/confluent-schema-registry';
import { createAvroCodec, NOT_CACHED } from '../../../../lib/kafka/avro.ts';
import { errorCode, isRetryable } from '../../../../lib/errors.ts';
import { TEST_SCHEMA } from '../../../support/runtime.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';

describe('Avro codec against the real registry', () => {
  const registryUrl = testEnv().SCHEMA_REGISTRY_URL ?? '';
  const registry = new SchemaRegistry({ host: registryUrl });
  const subject = `${uniqueName('codec')}-value`;
  let id: number;

  beforeAll(async () => {
    ({ id } = await registry.register({ type: SchemaType.AVRO, schema: JSON.stringify(TEST_SCHEMA) }, { subject }));
  });
  afterAll(async () => {
    await fetch(`${registryUrl}/subjects/${subject}`, { method: 'DELETE' }).catch(() => undefined);
  });

  it('decodes synchronously once a schema id is cached, with the same result as the registry', async () => {
    const codec = createAvroCodec({ registryUrl });
    const buffer = await registry.encode(id, { id: 'a', seq: 7, kind: 'ok' });
    expect(codec.decodeCached?.(buffer)).toBe(NOT_CACHED);
    expect(await codec.decode(buffer)).toEqual(await registry.decode(buffer));
    expect(codec.decodeCached?.(buffer)).toEqual({ id: 'a', seq: 7, kind: 'ok' });
    // The codec's own encode goes through the same cache.
    expect(codec.decodeCached?.(await codec.encode(subject, { id: 'b', seq: 8, kind: 'x' }))).toEqual({ id: 'b', seq: 8, kind: 'x' });
  });

  it('throws the same permanent errors on both paths (framing, truncated body, trailing data) and classifies an unknown schema id', async () => {
    const codec = createAvroCodec({ registryUrl });
    const good = await registry.encode(id, { id: 'abc', seq: 1, kind: 'ok' });
    await codec.decode(good);
    const cases: Array<[Buffer, string]> = [
      [Buffer.from('not avro'), 'DECODE_BAD_FRAMING'],
      [good.subarray(0, good.length - 2), 'DECODE_FAILED'],
      [Buffer.concat([good, Buffer.from([0])]), 'DECODE_FAILED'],
    ];
    for (const [buffer, code] of cases) {
      let syncError: unknown;
      try {
        codec.decodeCached?.(buffer);
      } catch (error) {
        syncError = error;
      }
      expect([errorCode(syncError), isRetryable(syncError)]).toEqual([code, false]);
      await expect(codec.decode(buffer)).rejects.toMatchObject({ code, retryable: false });
    }
    const unknown = Buffer.concat([Buffer.from([0, 0x7f, 0xff, 0xff, 0xf0]), Buffer.from('x')]);
    expect(codec.decodeCached?.(unknown)).toBe(NOT_CACHED);
    await expect(codec.decode(unknown)).rejects.toMatchObject({ code: 'DECODE_UNKNOWN_SCHEMA', retryable: false });
  });

  it('says the registry is unavailable (retryable) when it cannot be reached', async () => {
    const codec = createAvroCodec({ registryUrl: 'http://127.0.0.1:9' });
    const buffer = await registry.encode(id, { id: 'a', seq: 1, kind: 'ok' });
    await expect(codec.decode(buffer)).rejects.toMatchObject({ code: 'REGISTRY_UNAVAILABLE', retryable: true });
  });
});
