import pg from 'pg';
import { context, type Span } from '@opentelemetry/api';
import { inSpan, recordSpanError, SpanKind, telemetryActive, tracer } from '../telemetry.ts';

export type Pool = pg.Pool;
export type PoolClient = pg.PoolClient;

export interface PoolOptions {
  readonly connectionString: string;
  readonly max?: number;
  /** A schema to put first on the search_path (tests isolate themselves with one). */
  readonly schema?: string;
  readonly applicationName?: string;
  /** Told about idle connections that dropped (they are replaced on the next checkout). */
  readonly onIdleError?: (error: Error) => void;
}

export function createPool(options: PoolOptions): Pool {
  const pool = new pg.Pool({
    connectionString: options.connectionString,
    max: options.max ?? 10,
    application_name: options.applicationName ?? 'agent-manager',
    connectionTimeoutMillis: 5_000,
    ...(options.schema ? { options: `-c search_path=${options.schema},public` } : {}),
  });
  instrumentPool(pool);
  pool.on('connect', corkQueryWrites);
  // An idle client whose connection drops (a Postgres restart or failover) emits 'error'; pg-pool
  // discards it and the next checkout connects anew. Unhandled, the event would end the process.
  pool.on('error', (error) => options.onIdleError?.(error));
  // pg-pool listens only on IDLE clients: one checked out (a transaction, a handler) whose server
  // goes away (57P01 on `pg_ctl stop -m fast`) emits 'error' with no listener, and the process
  // dies. Its pending query rejects anyway and release() discards it, so the event needs no action.
  pool.on('connect', (client) => client.on('error', ignoreCheckedOutError));
  return pool;
}

function ignoreCheckedOutError(): void {
  // Handled where it matters: the query in flight rejects with it (see createPool).
}

/**
 * pg writes each protocol message of a parameterized query (parse, bind, describe, execute, sync)
 * with its own socket write, one system call each, which dominated the provisioner's CPU profile.
 * Corking the socket until the next tick sends a query's messages in one write.
 */
function corkQueryWrites(client: PoolClient): void {
  const stream = (client as unknown as { connection?: { stream?: { cork?: unknown; uncork?: unknown } } }).connection?.stream;
  if (!stream || typeof stream.cork !== 'function' || typeof stream.uncork !== 'function') return;
  const socket = stream as { cork(): void; uncork(): void };
  const uncork = () => socket.uncork();
  const target = client as unknown as Instrumentable;
  const query = target.query;
  target.query = function (this: unknown, ...args: unknown[]) {
    socket.cork();
    process.nextTick(uncork);
    return query.apply(this, args);
  };
}

/** Runs `work` in one transaction: committed when it resolves, rolled back when it throws. */
export async function withTransaction<T>(pool: Pool, work: (client: PoolClient) => Promise<T>): Promise<T> {
  if (telemetryActive()) {
    // Its BEGIN, queries and COMMIT are children of one `db transaction` span.
    return inSpan('db transaction', { kind: SpanKind.INTERNAL, attributes: { 'db.system.name': 'postgresql' } }, () => transaction(pool, work));
  }
  return transaction(pool, work);
}

async function transaction<T>(pool: Pool, work: (client: PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  /** Set when the connection is broken: release(error) discards it instead of pooling it again. */
  let broken: Error | undefined;
  try {
    await client.query('BEGIN');
    const result = await work(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    // A ROLLBACK that fails means the connection is gone.
    await client.query('ROLLBACK').catch((failure: unknown) => {
      broken = failure instanceof Error ? failure : new Error(String(failure));
    });
    throw error;
  } finally {
    client.release(broken);
  }
}

// --- Database spans, by hand (no pg instrumentation package here) --------------------------------
//
// One CLIENT span per query made through `pool.query` or through a client checked out with
// `pool.connect()`. The query text is recorded (it is parameterized: values are never recorded).
// With telemetry off each call costs one boolean check.

type AnyFunction = (this: unknown, ...args: unknown[]) => unknown;
const INSTRUMENTED = Symbol.for('agent-manager.db.instrumented');
const TRACED = Symbol.for('agent-manager.db.traced');
interface Instrumentable {
  query: AnyFunction;
  [INSTRUMENTED]?: boolean;
  [TRACED]?: boolean;
}

function operationOf(text: string): string {
  const match = /^\s*([A-Za-z]+)/.exec(text);
  return match?.[1]?.toUpperCase() ?? 'QUERY';
}

function startQuerySpan(args: unknown[]): Span | undefined {
  const first = args[0];
  // Cursors and streams (submittables) run outside a span: their end is not a callback or promise.
  if (typeof first === 'object' && first !== null && typeof (first as { submit?: unknown }).submit === 'function') return undefined;
  const configText = typeof first === 'object' && first !== null ? (first as { text?: unknown }).text : undefined;
  const text = typeof first === 'string' ? first : typeof configText === 'string' ? configText : '';
  const operation = operationOf(text);
  return tracer().startSpan(
    operation,
    { kind: SpanKind.CLIENT, attributes: { 'db.system.name': 'postgresql', 'db.operation.name': operation, 'db.query.text': text.slice(0, 2_000) } },
    context.active(),
  );
}

/** Calls `original` inside a query span, whichever way it reports its end (callback or promise). */
function traced(original: AnyFunction, self: unknown, args: unknown[]): unknown {
  const span = startQuerySpan(args);
  if (span === undefined) return original.apply(self, args);
  const last = args.length - 1;
  const callback = args[last];
  if (typeof callback === 'function') {
    args[last] = function (this: unknown, error: unknown, result: unknown) {
      if (error) recordSpanError(span, error);
      span.end();
      return (callback as AnyFunction).call(this, error, result);
    };
    return original.apply(self, args);
  }
  let result: unknown;
  try {
    result = original.apply(self, args);
  } catch (error) {
    recordSpanError(span, error);
    span.end();
    throw error;
  }
  if (result instanceof Promise) {
    return result.then(
      (value: unknown) => {
        span.end();
        return value;
      },
      (error: unknown) => {
        recordSpanError(span, error);
        span.end();
        throw error;
      },
    );
  }
  span.end();
  return result;
}

function instrumentPool(pool: Pool): void {
  const target = pool as unknown as Instrumentable & { connect: AnyFunction };
  const poolQuery = target.query;
  target.query = function (this: unknown, ...args: unknown[]) {
    return telemetryActive() ? traced(poolQuery, this, args) : poolQuery.apply(this, args);
  };
  // A client checked out with `pool.connect()` (a transaction, a handler) traces its queries
  // until it is released; `pool.query` checks clients out with a callback and is traced above.
  // A checkout that fails (refused, timed out, refused login) means the database is unavailable,
  // whatever the socket error says: the error is marked so (see unavailableDependency).
  const poolConnect = target.connect;
  target.connect = function (this: unknown, ...args: unknown[]) {
    const callback = args[0];
    if (typeof callback === 'function') {
      args[0] = (error: unknown, ...rest: unknown[]) => (callback as AnyFunction).call(undefined, markUnavailable(error), ...rest);
      return poolConnect.apply(this, args);
    }
    const result = poolConnect.apply(this, args);
    if (!(result instanceof Promise)) return result;
    return result.then(
      (client: unknown) => {
        traceCheckout(client as PoolClient);
        return client;
      },
      (error: unknown) => {
        throw markUnavailable(error);
      },
    );
  };
}

function markUnavailable(error: unknown): unknown {
  if (typeof error === 'object' && error !== null && !Object.hasOwn(error, 'dependency')) {
    Object.defineProperty(error, 'dependency', { value: 'postgres', enumerable: false });
  }
  return error;
}

function traceCheckout(client: PoolClient): void {
  const target = client as unknown as Instrumentable & { release: AnyFunction };
  if (!target[INSTRUMENTED]) {
    target[INSTRUMENTED] = true;
    const clientQuery = target.query;
    target.query = function (this: unknown, ...args: unknown[]) {
      return target[TRACED] === true && telemetryActive() ? traced(clientQuery, this, args) : clientQuery.apply(this, args);
    };
  }
  target[TRACED] = true;
  // pg-pool gives the client a new `release` on each checkout: wrapped for this checkout only.
  const release = target.release;
  target.release = function (this: unknown, ...args: unknown[]) {
    target[TRACED] = false;
    return release.apply(this, args);
  };
}
