/**
 * Where the local stack listens. Ports are off the well-known defaults so the stack can run beside a
 * developer's own Postgres, Redis or Kafka; every service reads these through its configuration,
 * so pointing it elsewhere is a matter of environment variables (see `agent-manager stack env`).
 */
export const LOCAL_STACK = {
  kafka: { host: '127.0.0.1', port: 19092, controllerPort: 19093 },
  schemaRegistry: { host: '127.0.0.1', port: 18081 },
  postgres: { host: '127.0.0.1', port: 15432, user: 'agent_manager', password: 'agent_manager', database: 'agent_manager' },
  redis: { host: '127.0.0.1', port: 16379 },
  s3: { host: '127.0.0.1', port: 19000, region: 'us-east-1', accessKeyId: 'local', secretAccessKey: 'local-secret' },
  /** OPA standing in for SentinelNet, the policy decision point. */
  opa: { host: '127.0.0.1', port: 18181 },
} as const;

/** The environment that points a service (or a test) at the local stack. */
export function localStackEnv(): Record<string, string> {
  const { kafka, schemaRegistry, postgres, redis, s3, opa } = LOCAL_STACK;
  return {
    KAFKA_BROKERS: `${kafka.host}:${kafka.port}`,
    SCHEMA_REGISTRY_URL: `http://${schemaRegistry.host}:${schemaRegistry.port}/apis/ccompat/v7`,
    DATABASE_URL: `postgres://${postgres.user}:${postgres.password}@${postgres.host}:${postgres.port}/${postgres.database}`,
    REDIS_URL: `redis://${redis.host}:${redis.port}`,
    S3_ENDPOINT: `http://${s3.host}:${s3.port}`,
    S3_REGION: s3.region,
    S3_ACCESS_KEY_ID: s3.accessKeyId,
    S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
    OPA_URL: `http://${opa.host}:${opa.port}`,
  };
}
