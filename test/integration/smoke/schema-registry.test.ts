import { SchemaRegistry, SchemaType } from '@kafkajs/confluent-schema-registry';
import { testEnv, uniqueName } from '../../support/stack.ts';

describe('Schema Registry (Confluent-compatible API) with avsc', () => {
  const registry = new SchemaRegistry({ host: testEnv().SCHEMA_REGISTRY_URL ?? '' });
  const subject = `${uniqueName('smoke')}-value`;
  const name = 'Ping';
  const v1 = { type: 'record', name, namespace: 'smoke', fields: [{ name: 'id', type: 'string' }, { name: 'count', type: 'int' }] };

  afterAll(async () => {
    await fetch(`${testEnv().SCHEMA_REGISTRY_URL}/subjects/${subject}`, { method: 'DELETE' });
  });

  it('registers a schema and round-trips a record in the Confluent wire format', async () => {
    const { id } = await registry.register({ type: SchemaType.AVRO, schema: JSON.stringify(v1) }, { subject });
    const encoded = await registry.encode(id, { id: 'a-1', count: 7 });
    expect(encoded[0]).toBe(0); // magic byte
    expect(encoded.readInt32BE(1)).toBe(id);
    expect(await registry.decode(encoded)).toEqual({ id: 'a-1', count: 7 });
  });

  it('accepts a backward-compatible change and refuses an incompatible one', async () => {
    const compatible = { ...v1, fields: [...v1.fields, { name: 'note', type: ['null', 'string'], default: null }] };
    await expect(registry.register({ type: SchemaType.AVRO, schema: JSON.stringify(compatible) }, { subject })).resolves.toHaveProperty('id');

    const incompatible = { ...v1, fields: [{ name: 'id', type: 'string' }, { name: 'count', type: 'int' }, { name: 'required', type: 'long' }] };
    await expect(registry.register({ type: SchemaType.AVRO, schema: JSON.stringify(incompatible) }, { subject })).rejects.toThrow();
  });
});
