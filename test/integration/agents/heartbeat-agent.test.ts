import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { eventually } from '../../support/runtime.ts';

// The reference agent as the local driver runs it (a child with an IPC channel): if its supervisor
// goes away before it is ready, nobody can ever hear its ready, so it must not linger.
jest.setTimeout(60_000);

describe('heartbeat agent', () => {
  it('exits 1 when its supervisor channel closes before it is ready', async () => {
    const child = spawn(process.execPath, [join(process.cwd(), 'agents', 'heartbeat-agent.ts')], {
      env: {
        PATH: process.env.PATH ?? '',
        AGENT_ID: randomUUID(),
        // Nothing listens here: heartbeat #0 is never acknowledged, so the agent never becomes ready.
        KAFKA_BROKERS: '127.0.0.1:1',
        KAFKA_SECURITY_PROTOCOL: 'plaintext',
        SCHEMA_REGISTRY_URL: 'http://127.0.0.1:1',
        LOG_LEVEL: 'info',
      },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    let output = '';
    child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      await eventually(() => output.includes('"msg":"starting"'), 30_000, 'the agent starting');
      child.disconnect();
      expect(await exited).toBe(1);
      expect(output).toContain('the supervisor went away before this agent was ready; exiting');
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });
});
