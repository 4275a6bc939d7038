import { join } from 'node:path';
import type { Pool } from '../../../../lib/db/pool.ts';
import { errorCode, errorMessage, isRetryable } from '../../../../lib/errors.ts';
import type { AvroCodec } from '../../../../lib/kafka/avro.ts';
import { createLogger } from '../../../../lib/logger.ts';
import type { BatchContext } from '../../../../lib/runtime/batch-worker.ts';
import { topicNames } from '../../../../lib/service/context.ts';
import type { AgentRequest } from '../../../../lib/contracts/types.ts';
import { loadIdentitiesConfig } from '../../../../services/ingest/authz.ts';
import { createIngestBatchHandler, type IngestDeps } from '../../../../services/ingest/handler.ts';
import { DEFAULT_API_LIMITS } from '../../../../services/ingest/api.ts';
import { DEFAULT_KNOWN_TEMPLATES, loadIngestOptions } from '../../../../services/ingest/main.ts';
import { formatReason, reasonCode } from '../../../../services/ingest/process-request.ts';

function caught(run: () => unknown): unknown {
  try {
    run();
  } catch (error) {
    return error;
  }
  throw new Error('expected a throw');
}

describe('loadIngestOptions', () => {
  it('defaults: config/identities.json, the default templates, no API', () => {
    expect(loadIngestOptions({})).toEqual({
      identitiesFile: join(process.cwd(), 'config', 'identities.json'),
      knownTemplates: DEFAULT_KNOWN_TEMPLATES,
      concurrency: 4,
      api: undefined,
    });
  });

  it('serves the API when the three TLS files are set, resolved against the working directory', () => {
    const options = loadIngestOptions({
      INGEST_TLS_CERT_FILE: 'tls/server.pem',
      INGEST_TLS_KEY_FILE: '/secrets/server-key.pem',
      INGEST_TLS_CA_FILE: 'tls/ca.pem',
      INGEST_API_PORT: '9443',
      INGEST_KNOWN_TEMPLATES: ' echo , custom ,',
    });
    expect(options.api).toEqual({
      port: 9443,
      host: '127.0.0.1',
      tlsCertFile: join(process.cwd(), 'tls/server.pem'),
      tlsKeyFile: '/secrets/server-key.pem',
      tlsCaFile: join(process.cwd(), 'tls/ca.pem'),
      limits: DEFAULT_API_LIMITS,
      heartbeatTimeoutMs: 500,
    });
    expect(options.knownTemplates).toEqual(['echo', 'custom']);
  });

  it('reads the API limits', () => {
    const tls = { INGEST_TLS_CERT_FILE: 'a.pem', INGEST_TLS_KEY_FILE: 'b.pem', INGEST_TLS_CA_FILE: 'c.pem' };
    const options = loadIngestOptions({
      ...tls,
      INGEST_API_BODY_LIMIT_BYTES: '2048',
      INGEST_API_CONNECTION_TIMEOUT_MS: '5000',
      INGEST_API_REQUEST_TIMEOUT_MS: '4000',
      INGEST_API_KEEP_ALIVE_TIMEOUT_MS: '3000',
      INGEST_API_RATE_LIMIT_MAX: '10',
      INGEST_API_RATE_LIMIT_WINDOW_MS: '1000',
    });
    expect(options.api?.limits).toEqual({ bodyLimitBytes: 2048, connectionTimeoutMs: 5000, requestTimeoutMs: 4000, keepAliveTimeoutMs: 3000, rateLimitMax: 10, rateLimitWindowMs: 1000 });
    expect(errorMessage(caught(() => loadIngestOptions({ ...tls, INGEST_API_RATE_LIMIT_MAX: '0' })))).toMatch(/INGEST_API_RATE_LIMIT_MAX/);
    expect(errorMessage(caught(() => loadIngestOptions({ ...tls, INGEST_API_BODY_LIMIT_BYTES: 'lots' })))).toMatch(/INGEST_API_BODY_LIMIT_BYTES/);
  });

  it('refuses a partial TLS configuration, naming what is missing', () => {
    const error = caught(() => loadIngestOptions({ INGEST_TLS_CERT_FILE: 'server.pem' }));
    expect(errorCode(error)).toBe('CONFIG_INVALID');
    expect(errorMessage(error)).toMatch(/INGEST_TLS_KEY_FILE, INGEST_TLS_CA_FILE: required to serve the HTTPS API because INGEST_TLS_CERT_FILE is set/);
  });

  it('refuses a bad port', () => {
    expect(errorMessage(caught(() => loadIngestOptions({ INGEST_API_PORT: '70000' })))).toMatch(/INGEST_API_PORT/);
  });
});

describe('stored reasons', () => {
  it('carry their code in front', () => {
    expect(formatReason('UNAUTHORIZED', 'no')).toBe('UNAUTHORIZED: no');
    expect(reasonCode('UNAUTHORIZED: no')).toBe('UNAUTHORIZED');
    expect(reasonCode('whatever: no')).toBeNull();
    expect(reasonCode('')).toBeNull();
  });
});

describe('the batch handler when Postgres is down', () => {
  it('throws a retryable error (the runtime retries the batch; it is not a rejection)', async () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:15432'), { code: 'ECONNREFUSED' });
    const pool = { connect: () => Promise.reject(refused) } as unknown as Pool;
    const codec: AvroCodec = { decode: () => Promise.reject(new Error('unused')), encode: () => Promise.reject(new Error('unused')) };
    const deps: IngestDeps = {
      pool,
      codec,
      topics: topicNames(''),
      authz: loadIdentitiesConfig(join(process.cwd(), 'config', 'identities.json')),
      rules: { knownTemplates: ['echo'] },
      maxAttempts: 5,
      deadLetter: () => Promise.reject(new Error('unused')),
    };
    const request: AgentRequest = {
      requestId: '0b8e9a0e-1111-4222-8333-444455556666',
      idempotencyKey: 'k',
      action: 'STOP',
      agentId: '7d444840-9dc0-11d1-b245-5ffdce74fad2',
      spec: null,
      division: 'research',
      region: null,
      labels: {},
      requestedBy: 'kernel',
      createdAt: new Date(),
    };
    const ctx: BatchContext<IngestDeps> = { deps, log: createLogger('test', 'silent') };
    const batch = { topic: 'agent-requests', partition: 0, highWatermark: '1', attempt: 1, records: [{ value: request, offset: '0', key: 'k', timestamp: '0' }] };
    let error: unknown;
    try {
      await createIngestBatchHandler()(batch, ctx);
    } catch (e) {
      error = e;
    }
    expect(errorCode(error)).toBe('DATABASE_UNAVAILABLE');
    expect(isRetryable(error)).toBe(true);
  });
});
