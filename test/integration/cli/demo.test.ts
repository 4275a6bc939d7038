import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Kafka } from 'kafkajs';
import pg from 'pg';
import { aclPlan, deleteAcls } from '../../../lib/contracts/acls.ts';
import { killAgents } from '../../support/fleet.ts';
import { testEnv, testKafkaConfig, uniqueName } from '../../support/stack.ts';

// `npm run demo` as a user runs it (its own process), on its own topic prefix, database schema and
// agents folder so that it leaves the stack's default fleet alone.
jest.setTimeout(420_000);

function runDemo(args: readonly string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(process.cwd(), 'bin', 'agent-manager.js'), 'demo', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 400_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('npm run demo', () => {
  const prefix = `${uniqueName('demo')}.`;
  const schema = uniqueName('demo').replace(/[^a-z0-9_]/g, '_');
  const stateDir = mkdtempSync(join(tmpdir(), 'demo-agents-'));
  const env = testEnv();

  afterAll(async () => {
    killAgents(stateDir);
    rmSync(stateDir, { recursive: true, force: true });
    const client = new pg.Client({ connectionString: env.DATABASE_URL });
    await client.connect();
    await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => undefined);
    await client.end();
    const admin = new Kafka(testKafkaConfig('demo-teardown')).admin();
    await admin.connect();
    const mine = (await admin.listTopics()).filter((t) => t.startsWith(prefix));
    if (mine.length > 0) await admin.deleteTopics({ topics: mine }).catch(() => undefined);
    await deleteAcls(admin, aclPlan({ prefix })).catch(() => undefined);
    await admin.disconnect();
  });

  it('instantiates the agents, recovers a hung one (UNHEALTHY → restarted → RUNNING) and a killed one, destroys them all, and says so', async () => {
    const run = await runDemo(['--agents', '3', '--phase-timeout', '150'], { TOPIC_PREFIX: prefix, DATABASE_SCHEMA: schema, PROVISIONER_STATE_DIR: stateDir });
    expect({ code: run.code, stderr: run.stderr }).toEqual({ code: 0, stderr: '' });
    const lines = run.stdout.trimEnd().split('\n');
    expect(lines.at(-1)).toBe('demo: 3 instantiated, 3 reached RUNNING, 2 recovered, 3 destroyed, 0 failed');
    // The hung agent's story, in order: noticed, restarted, running again.
    const hung = lines.filter((line) => / hung agent [0-9a-f]{8}: /.test(line));
    expect(hung.join('\n')).toMatch(/RUNNING → UNHEALTHY[\s\S]*→ STARTING \(restarted\)[\s\S]*→ RUNNING/);
    expect(lines.some((line) => / killed agent [0-9a-f]{8}: .*→ RUNNING/.test(line))).toBe(true);
    expect(run.stdout).toContain('demo: 2 of 2 recovered');
  });
});
