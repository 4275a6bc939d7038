import { Kafka, logLevel, type Admin, type KafkaConfig } from 'kafkajs';
import { aclPlan, applyAcls, deleteAcls } from '../../../../lib/contracts/acls.ts';
import { createTopics, topicSettings } from '../../../../lib/contracts/topics.ts';
import { kafkajsSsl } from '../../../../lib/kafka/kafkajs.ts';
import { createCertificateAuthority, issueCertificate } from '../../../../dev/stack/pki.ts';
import type { StackPrincipal } from '../../../../dev/stack/endpoints.ts';
import { brokers, testKafkaConfig, testTls, uniqueName } from '../../../support/stack.ts';

jest.setTimeout(60_000);

/** A client that gives up at once: a refused connection must fail the test quickly, not retry. */
const once = (config: KafkaConfig): Kafka => new Kafka({ ...config, logLevel: logLevel.NOTHING, connectionTimeout: 3_000, retry: { retries: 0 } });
// Authorization failures are not retriable, so a few retries (which the idempotent producer needs) cost nothing.
const as = (principal: StackPrincipal) => new Kafka({ ...testKafkaConfig(`auth-${principal}`, principal), retry: { retries: 2, initialRetryTime: 100 } });

/** The kafkajs error type of a failed call (`TOPIC_AUTHORIZATION_FAILED`…), or its name, or 'ok'. */
async function outcome(work: () => Promise<unknown>): Promise<string> {
  try {
    await work();
    return 'ok';
  } catch (error) {
    // kafkajs wraps a protocol error it gave up on (KafkaJSNonRetriableError); its type is on the cause.
    type KafkaError = { type?: string; name?: string; message?: string; cause?: KafkaError };
    const e = error as KafkaError;
    return e.type ?? e.cause?.type ?? `${e.name}: ${e.message}`;
  }
}

async function produce(kafka: Kafka, topic: string): Promise<string> {
  const producer = kafka.producer({ idempotent: true, allowAutoTopicCreation: false });
  try {
    return await outcome(async () => {
      await producer.connect();
      await producer.send({ topic, acks: -1, messages: [{ key: 'k', value: 'v' }] });
    });
  } finally {
    await producer.disconnect().catch(() => undefined);
  }
}

async function listTopics(kafka: Kafka): Promise<string> {
  const admin = kafka.admin();
  try {
    return await outcome(async () => {
      await admin.connect();
      await admin.listTopics();
    });
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

/** Joins `groupId` on `topic` as `principal` (where group ACLs are checked): 'ok' or why not. */
async function joinGroup(principal: StackPrincipal, groupId: string, topic: string): Promise<string> {
  const consumer = as(principal).consumer({ groupId, retry: { retries: 0 } });
  try {
    return await outcome(async () => {
      await consumer.connect();
      await consumer.subscribe({ topics: [topic], fromBeginning: true });
      await new Promise<void>((resolve, reject) => {
        consumer.on(consumer.events.GROUP_JOIN, () => resolve());
        consumer.on(consumer.events.CRASH, (event) => reject(event.payload.error));
        void consumer.run({ eachMessage: async () => undefined }).catch(reject);
      });
    });
  } finally {
    await consumer.disconnect().catch(() => undefined);
  }
}

describe('Kafka authentication (mTLS) and authorization (ACLs) on the local stack', () => {
  const prefix = `${uniqueName('it-auth')}.`;
  const topic = (name: string) => `${prefix}${name}`;
  let admin: Admin;

  beforeAll(async () => {
    admin = new Kafka(testKafkaConfig('it-auth-admin')).admin();
    await admin.connect();
    await createTopics(admin, topicSettings({ partitions: 1 }), { prefix });
    await applyAcls(admin, aclPlan({ prefix }));
  });

  afterAll(async () => {
    const mine = (await admin.listTopics()).filter((t) => t.startsWith(prefix));
    await admin.deleteTopics({ topics: mine }).catch(() => undefined);
    await deleteAcls(admin, aclPlan({ prefix })).catch(() => undefined);
    await admin.disconnect();
  });

  describe('unauthenticated clients are refused', () => {
    it('a plaintext client', async () => {
      expect(await listTopics(once({ clientId: 'it-auth-plain', brokers: brokers() }))).toMatch(/KafkaJS/);
    });

    it('a TLS client without a certificate (the broker requires one)', async () => {
      const { ca } = testTls();
      expect(await listTopics(once({ clientId: 'it-auth-nocert', brokers: brokers(), ssl: { ca: [ca ?? ''] } }))).toMatch(/certificate required|alert/i);
    });

    it('a certificate from another CA, even with a known name', async () => {
      const other = createCertificateAuthority('Some other CA', 1);
      const rogue = issueCertificate(other, 'kernel', { validDays: 1 });
      const ssl = kafkajsSsl({ ca: testTls().ca, cert: rogue.cert, key: rogue.key });
      expect(await listTopics(once({ clientId: 'it-auth-rogue', brokers: brokers(), ...(ssl ? { ssl } : {}) }))).toMatch(/KafkaJS/);
    });
  });

  describe('each principal may do only its part', () => {
    it('the Kernel may produce to agent-requests', async () => {
      expect(await produce(as('kernel'), topic('agent-requests'))).toBe('ok');
    });

    it("a service's principal may not produce to agent-requests", async () => {
      expect(await produce(as('ingest'), topic('agent-requests'))).toBe('TOPIC_AUTHORIZATION_FAILED');
      expect(await produce(as('provisioner'), topic('agent-requests'))).toBe('TOPIC_AUTHORIZATION_FAILED');
    });

    it('ingest may produce its outputs', async () => {
      expect(await produce(as('ingest'), topic('agent-commands'))).toBe('ok');
      expect(await produce(as('ingest'), topic('agent-requests.dlq'))).toBe('ok');
    });

    it("an agent's principal may produce heartbeats and nothing else", async () => {
      const agent = as('agent');
      expect(await produce(agent, topic('agent-heartbeats'))).toBe('ok');
      expect(await produce(agent, topic('agent-commands'))).toBe('TOPIC_AUTHORIZATION_FAILED');
      expect(await produce(agent, topic('agent-requests'))).toBe('TOPIC_AUTHORIZATION_FAILED');
    });

    it("an agent's principal may read nothing: no consumer group, not even another topic's offsets", async () => {
      // kafkajs reports the broker's GROUP_AUTHORIZATION_FAILED on FindCoordinator as "Failed to find group coordinator".
      expect(await joinGroup('agent', topic('kernel-agent'), topic('agent-heartbeats'))).toMatch(/GROUP_AUTHORIZATION_FAILED|group coordinator/);
      const agentAdmin = as('agent').admin();
      try {
        await agentAdmin.connect();
        expect(await outcome(() => agentAdmin.fetchTopicOffsets(topic('agent-status')))).toBe('TOPIC_AUTHORIZATION_FAILED');
      } finally {
        await agentAdmin.disconnect();
      }
    });

    it('the Kernel reads agent-status in its own consumer groups only', async () => {
      expect(await joinGroup('kernel', topic('kernel-status'), topic('agent-status'))).toBe('ok');
      expect(await joinGroup('kernel', topic('agent-manager-ingest'), topic('agent-status'))).toMatch(/GROUP_AUTHORIZATION_FAILED|group coordinator/);
    });

    it('no service principal may create topics or change ACLs', async () => {
      const kernelAdmin = as('kernel').admin();
      try {
        await kernelAdmin.connect();
        expect(await outcome(() => kernelAdmin.createTopics({ topics: [{ topic: topic('sneaky') }] }))).toMatch(/AUTHORIZATION_FAILED|not authorized|KafkaJS/i);
        expect(await outcome(() => applyAcls(kernelAdmin, aclPlan({ prefix: topic('sneaky') })))).toMatch(/ACL|AUTHORIZATION/i);
      } finally {
        await kernelAdmin.disconnect();
      }
    });
  });
});
