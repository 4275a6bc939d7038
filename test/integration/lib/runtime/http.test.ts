import { createMetrics } from '../../../../lib/metrics.ts';
import { startOpsServer } from '../../../../lib/runtime/http.ts';
import { createKafkajsClient } from '../../../../lib/kafka/kafkajs.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { brokers, testTls } from '../../../support/stack.ts';

describe('ops HTTP listener', () => {
  it('serves /livez, /readyz with a real Kafka check, and /metrics', async () => {
    const metrics = createMetrics('ops-test', { defaultMetrics: false });
    metrics.recordsProcessed.inc({ topic: 't' }, 3);
    const kafka = createKafkajsClient({ clientId: 'ops-test', brokers: brokers(), tls: testTls(), logger: createLogger('ops-test', 'silent') });
    let accepting = true;
    const logged: string[] = [];
    const ops = await startOpsServer({
      port: 0,
      host: '127.0.0.1',
      registry: metrics.registry,
      accepting: () => accepting,
      checks: [
        ['kafka', () => kafka.ping(3000)],
        ['unreachable', async () => false],
        // A driver's message can name hosts, users and databases: logged, never answered.
        ['postgres', () => Promise.reject(new Error('password authentication failed for user "svc_secret" at db.internal:5432'))],
      ],
      onCheckError: (name, error) => logged.push(`${name}: ${String(error)}`),
    });
    const base = `http://127.0.0.1:${ops.port}`;
    try {
      expect((await fetch(`${base}/livez`)).status).toBe(200);
      const notReady = await fetch(`${base}/readyz`);
      expect(notReady.status).toBe(503);
      const body = await notReady.text();
      expect(JSON.parse(body)).toMatchObject({ checks: { kafka: 'ok', unreachable: 'failing', postgres: 'error' } });
      expect(body).not.toMatch(/svc_secret|db\.internal|password/);
      expect(logged).toEqual([expect.stringContaining('svc_secret')]);
      const text = await (await fetch(`${base}/metrics`)).text();
      expect(text).toContain('agent_manager_records_processed_total{topic="t",service="ops-test"} 3');
      accepting = false;
      expect(await (await fetch(`${base}/readyz`)).json()).toMatchObject({ draining: true });
    } finally {
      await ops.close();
    }
  });

  it('closes while a keep-alive client keeps polling /readyz (as a probe does during a drain)', async () => {
    const metrics = createMetrics('ops-close', { defaultMetrics: false });
    let accepting = true;
    // A check slower than the close's wait: a request in flight when close() begins.
    const ops = await startOpsServer({ port: 0, host: '127.0.0.1', registry: metrics.registry, accepting: () => accepting, checks: [['slow', () => new Promise((r) => setTimeout(() => r(true), 300))]], closeWaitMs: 200 });
    const base = `http://127.0.0.1:${ops.port}`;
    let polling = true;
    const answers: number[] = [];
    const poller = (async () => {
      while (polling) {
        answers.push(await fetch(`${base}/readyz`).then((r) => r.status, () => 0));
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    try {
      await new Promise((r) => setTimeout(r, 500));
      accepting = false;
      // Before the fix this never resolved: the poller's connection was never idle.
      await ops.close();
      expect(answers).toContain(200);
    } finally {
      polling = false;
      await poller;
    }
  });
});
