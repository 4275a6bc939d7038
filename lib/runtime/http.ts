import { createServer, type Server } from 'node:http';
import type { Registry } from 'prom-client';

/** A named dependency check for `/readyz`; resolves true when the dependency answers. */
export type ReadinessCheck = readonly [name: string, check: () => Promise<boolean>];

export interface OpsServerOptions {
  readonly port: number;
  readonly host?: string;
  readonly registry: Registry;
  readonly checks: readonly ReadinessCheck[];
  /** False while draining: readiness fails so no new traffic is routed here. */
  readonly accepting: () => boolean;
  readonly checkTimeoutMs?: number;
  /** Told why a check threw (for the log; the answer says only `error`). */
  readonly onCheckError?: (name: string, error: unknown) => void;
  /** How long `close()` lets requests in flight finish before cutting their connections. Default 2 s. */
  readonly closeWaitMs?: number;
}

/**
 * One check's status word: `ok`, `failing`, `error` or `timeout`. The error's text is logged, never
 * answered: /readyz is unauthenticated, and driver messages can name hosts, users and databases.
 */
async function runCheck([name, check]: ReadinessCheck, timeoutMs: number, onError: OpsServerOptions['onCheckError']): Promise<[string, string]> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs).unref();
  });
  const result = check().then(
    (ok) => (ok ? 'ok' : 'failing'),
    (error: unknown) => {
      onError?.(name, error);
      return 'error';
    },
  );
  try {
    return [name, await Promise.race([result, timeout])];
  } finally {
    clearTimeout(timer);
  }
}

/** `/livez`, `/readyz` and `/metrics` on one small listener per process. */
export async function startOpsServer(options: OpsServerOptions): Promise<{ server: Server; port: number; close: () => Promise<void> }> {
  let closing = false;
  const server = createServer((request, response) => {
    const path = (request.url ?? '/').split('?')[0];
    const reply = (status: number, body: string, type = 'application/json') => {
      // Once closing, no connection is kept alive: a probe polling on one would hold close() open.
      response.writeHead(status, { 'content-type': type, ...(closing ? { connection: 'close' } : {}) }).end(body);
    };
    if (path === '/livez') return reply(200, '{"status":"ok"}');
    // Draining: not ready, whatever the dependencies say (and they may be closed already).
    if (path === '/readyz' && !options.accepting()) return reply(503, '{"status":"not ready","draining":true,"checks":{}}');
    if (path === '/readyz') {
      void Promise.all(options.checks.map((c) => runCheck(c, options.checkTimeoutMs ?? 2000, options.onCheckError))).then((results) => {
        const checks = Object.fromEntries(results);
        const ready = options.accepting() && results.every(([, r]) => r === 'ok');
        reply(ready ? 200 : 503, JSON.stringify({ status: ready ? 'ready' : 'not ready', draining: !options.accepting(), checks }));
      });
      return;
    }
    if (path === '/metrics') {
      void options.registry.metrics().then(
        (text) => reply(200, text, options.registry.contentType),
        (error: unknown) => {
          options.onCheckError?.('metrics', error);
          reply(500, '{"error":"metrics unavailable"}');
        },
      );
      return;
    }
    reply(404, '{"error":"not found"}');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host ?? '0.0.0.0', resolve);
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : options.port;
  const closeWaitMs = options.closeWaitMs ?? 2_000;
  const close = async (): Promise<void> => {
    closing = true;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    // close() waits for every connection to end, and a keep-alive client (a probe, a scraper) may
    // never let its connection go idle: idle ones go now, busy ones after their request or the wait.
    server.closeIdleConnections();
    const timer = setTimeout(() => server.closeAllConnections(), closeWaitMs);
    try {
      await closed;
    } finally {
      clearTimeout(timer);
    }
  };
  return { server, port, close };
}
