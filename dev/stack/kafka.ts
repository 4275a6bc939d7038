import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Kafka, logLevel } from 'kafkajs';
import { LOCAL_STACK } from './endpoints.ts';
import { ensureMaven, findJava } from './install.ts';
import { processStatus, run, spawnDetached, stopProcessGroup, waitUntil } from './process.ts';
import type { StackComponent, StackContext } from './types.ts';

const KAFKA_VERSION = '4.1.1';
const SLF4J_VERSION = '2.0.17';
const { host, port, controllerPort } = LOCAL_STACK.kafka;

const pom = `<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.agent-manager</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>${KAFKA_VERSION}</version></dependency>
    <!-- the broker's logging backend ships only in Kafka's tarball, not in its POM -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>${SLF4J_VERSION}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId><version>${SLF4J_VERSION}</version></dependency>
  </dependencies>
</project>
`;

function serverProperties(dataDir: string): string {
  return `process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=${host}:${controllerPort}
listeners=PLAINTEXT://${host}:${port},CONTROLLER://${host}:${controllerPort}
advertised.listeners=PLAINTEXT://${host}:${port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=${dataDir}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
`;
}

export async function kafkaHealthy(brokers: string[], timeoutMs = 3000): Promise<boolean> {
  const admin = new Kafka({ brokers, logLevel: logLevel.NOTHING, connectionTimeout: timeoutMs, retry: { retries: 0 } }).admin();
  try {
    await admin.connect();
    const cluster = await admin.describeCluster();
    return cluster.brokers.length > 0 && cluster.controller !== null;
  } catch {
    return false;
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

export function kafkaComponent(): StackComponent {
  const name = 'kafka';
  const address = `${host}:${port}`;
  const dirs = (ctx: StackContext) => {
    const dir = join(ctx.stackDir, 'kafka');
    return { dir, libs: join(dir, 'libs'), data: join(dir, 'data'), pid: join(dir, 'pid'), log: join(ctx.stackDir, 'logs', 'kafka.log') };
  };
  const healthy = () => kafkaHealthy([address]);

  return {
    name,
    version: `Apache Kafka ${KAFKA_VERSION} (KRaft, one broker+controller)`,
    address,
    env: () => ({ KAFKA_BROKERS: address }),
    async install(ctx) {
      const d = dirs(ctx);
      const marker = join(d.libs, `.kafka-${KAFKA_VERSION}`);
      if (existsSync(marker)) return;
      await ensureMaven(ctx, name);
      ctx.progress(`kafka: downloading kafka_2.13 ${KAFKA_VERSION} and its dependencies from Maven Central`);
      mkdirSync(d.dir, { recursive: true });
      writeFileSync(join(d.dir, 'pom.xml'), pom);
      await run('kafka: mvn dependency:copy-dependencies', 'mvn', ['-q', '-B', '-f', join(d.dir, 'pom.xml'), 'dependency:copy-dependencies', '-DincludeScope=runtime', `-DoutputDirectory=${d.libs}`], {
        logFile: join(ctx.stackDir, 'logs', 'kafka-install.log'),
      });
      writeFileSync(marker, '');
    },
    async start(ctx) {
      if (await healthy()) return 'reused';
      const d = dirs(ctx);
      const java = await findJava(ctx, name, 17);
      const classpath = `${d.libs}/*`;
      const properties = join(d.dir, 'server.properties');
      writeFileSync(properties, serverProperties(d.data));
      const clusterIdFile = join(d.dir, 'cluster-id');
      if (!existsSync(join(d.data, 'meta.properties'))) {
        ctx.progress('kafka: formatting the KRaft log directory');
        if (!existsSync(clusterIdFile)) {
          const { stdout } = await run('kafka: storage random-uuid', java, ['-cp', classpath, 'kafka.tools.StorageTool', 'random-uuid']);
          writeFileSync(clusterIdFile, stdout.trim().split('\n').pop() ?? '');
        }
        const clusterId = readFileSync(clusterIdFile, 'utf8').trim();
        await run('kafka: storage format', java, ['-cp', classpath, 'kafka.tools.StorageTool', 'format', '--standalone', '-t', clusterId, '-c', properties, '--ignore-formatted'], {
          logFile: d.log,
        });
      }
      ctx.progress(`kafka: starting on ${address}`);
      const pid = spawnDetached({
        command: java,
        args: ['-Xms256m', '-Xmx768m', '-XX:+UseG1GC', '-Djava.awt.headless=true', '-cp', classpath, 'kafka.Kafka', properties],
        cwd: d.dir,
        logFile: d.log,
        pidFile: d.pid,
      });
      await waitUntil(name, healthy, { timeoutMs: 120_000, logFile: d.log, pid });
      return 'started';
    },
    async stop(ctx) {
      return stopProcessGroup(dirs(ctx).pid, 'SIGTERM', 30_000);
    },
    status(ctx) {
      return processStatus(this, dirs(ctx).pid, healthy);
    },
  };
}
