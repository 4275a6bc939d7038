import { resolve } from 'node:path';
import { errorCode, errorMessage } from '../../../../lib/errors.ts';
import { latestVersion, registerSchemas, subjectVersions } from '../../../../lib/contracts/registry.ts';
import { defaultSchemasDir, topicContract, TOPICS } from '../../../../lib/contracts/schemas.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';
import { mkdtempSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

describe('registerSchemas against the real Schema Registry', () => {
  const registryUrl = testEnv().SCHEMA_REGISTRY_URL ?? '';
  const schemasDir = defaultSchemasDir(resolve(__dirname, '../../../..'));
  const subjectPrefix = `${uniqueName('it-contracts')}.`;
  const subjects = TOPICS.map((topic) => `${subjectPrefix}${topic}-value`);
  const scratch = mkdtempSync(join(tmpdir(), 'contracts-'));

  afterAll(async () => {
    for (const subject of subjects) {
      const url = `${registryUrl}/subjects/${encodeURIComponent(subject)}`;
      await fetch(url, { method: 'DELETE' }).catch(() => undefined);
      await fetch(`${url}?permanent=true`, { method: 'DELETE' }).catch(() => undefined);
    }
    rmSync(scratch, { recursive: true, force: true });
  });

  it('registers every topic schema under <prefix><topic>-value', async () => {
    const results = await registerSchemas({ registryUrl, schemasDir, subjectPrefix });
    expect(results.map((r) => [r.topic, r.subject, r.status])).toEqual(TOPICS.map((topic, i) => [topic, subjects[i], 'registered']));
    for (const result of results) {
      const latest = await latestVersion(registryUrl, result.subject);
      expect(latest?.id).toBe(result.id);
      expect(JSON.parse(latest?.schema ?? 'null')).toEqual(topicContract(result.topic, schemasDir).schema);
    }
  });

  it('reports an unchanged schema as unchanged, with the same id, and adds no version', async () => {
    const before = await latestVersion(registryUrl, subjects[0] ?? '');
    const results = await registerSchemas({ registryUrl, schemasDir, subjectPrefix });
    expect(results.map((r) => r.status)).toEqual(TOPICS.map(() => 'unchanged'));
    expect(results[0]?.id).toBe(before?.id);
    expect(await subjectVersions(registryUrl, subjects[0] ?? '')).toEqual([1]);
  });

  it('refuses an incompatible change locally: nothing reaches the registry', async () => {
    // A schemas folder whose agent-status gains a required field (old records have no value for it).
    for (const topic of TOPICS) copyFileSync(join(schemasDir, `${topic}.avsc`), join(scratch, `${topic}.avsc`));
    const status = topicContract('agent-status', schemasDir).schema;
    const incompatible = { ...status, fields: [...status.fields, { name: 'owner', doc: 'Owning team.', type: 'string' }] };
    writeFileSync(join(scratch, 'agent-status.avsc'), JSON.stringify(incompatible, null, 2));
    // A compatible change to another topic in the same run must not be registered either.
    const heartbeat = topicContract('agent-heartbeats', schemasDir).schema;
    const compatible = { ...heartbeat, fields: [...heartbeat.fields, { name: 'note', doc: 'A note.', type: ['null', 'string'], default: null }] };
    writeFileSync(join(scratch, 'agent-heartbeats.avsc'), JSON.stringify(compatible, null, 2));

    let caught: unknown;
    try {
      await registerSchemas({ registryUrl, schemasDir: scratch, subjectPrefix });
    } catch (error) {
      caught = error;
    }
    expect(errorCode(caught)).toBe('SCHEMA_INCOMPATIBLE');
    expect(errorMessage(caught)).toContain(`${subjectPrefix}agent-status-value`);
    expect(errorMessage(caught)).toContain('field owner was added without a default');

    for (const subject of subjects) expect({ subject, versions: await subjectVersions(registryUrl, subject) }).toEqual({ subject, versions: [1] });
  });

  it('registers a compatible change as a new version', async () => {
    for (const topic of TOPICS) copyFileSync(join(schemasDir, `${topic}.avsc`), join(scratch, `${topic}.avsc`));
    const heartbeat = topicContract('agent-heartbeats', schemasDir).schema;
    const compatible = { ...heartbeat, fields: [...heartbeat.fields, { name: 'note', doc: 'A note.', type: ['null', 'string'], default: null }] };
    writeFileSync(join(scratch, 'agent-heartbeats.avsc'), JSON.stringify(compatible, null, 2));

    const results = await registerSchemas({ registryUrl, schemasDir: scratch, subjectPrefix, topics: ['agent-heartbeats'] });
    expect(results).toEqual([expect.objectContaining({ topic: 'agent-heartbeats', status: 'registered' })]);
    expect(await subjectVersions(registryUrl, `${subjectPrefix}agent-heartbeats-value`)).toEqual([1, 2]);
  });
});
