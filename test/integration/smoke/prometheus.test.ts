import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { LOCAL_PROMETHEUS, prometheusFiles, stackPrometheusUrl, writeScrapeTargets } from '../../../dev/stack/prometheus.ts';
import { uniqueName } from '../../support/stack.ts';

// The stack's Prometheus (`stack up --with prometheus`): it runs the stack's configuration, scrapes
// what a file in its file_sd folder lists, with the file's labels, and forgets a target whose file
// is removed. The target is a tiny /metrics server of the test's own on loopback.
jest.setTimeout(120_000);

const prometheus = process.env.PROMETHEUS_URL ?? stackPrometheusUrl();

interface Series {
  readonly metric: Record<string, string>;
  readonly value: [number, string];
}

async function query(promql: string): Promise<Series[]> {
  const response = await fetch(`${prometheus}/api/v1/query?query=${encodeURIComponent(promql)}`, { signal: AbortSignal.timeout(5_000) });
  const body = (await response.json()) as { status: string; data: { result: Series[] } };
  expect(body.status).toBe('success');
  return body.data.result;
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not seen within ${timeoutMs / 1000} s`);
    await sleep(1_000);
  }
}

describe('Prometheus of the local stack (file_sd targets)', () => {
  const name = uniqueName('smoke-prom').replace(/-/g, '_');
  let server: Server;
  let port = 0;
  let remove: (() => void) | undefined;

  beforeAll(async () => {
    server = createServer((request, response) => {
      if (request.url !== '/metrics') return void response.writeHead(404).end();
      response.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
      response.end(`# TYPE smoke_requests_total counter\nsmoke_requests_total{path="/x"} 42\n`);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    port = typeof address === 'object' && address ? address.port : 0;
  });

  afterAll(async () => {
    remove?.();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('runs the configuration the stack wrote', async () => {
    expect((await fetch(`${prometheus}/-/ready`, { signal: AbortSignal.timeout(5_000) })).ok).toBe(true);
    const config = (await (await fetch(`${prometheus}/api/v1/status/config`, { signal: AbortSignal.timeout(5_000) })).json()) as { data: { yaml: string } };
    expect(config.data.yaml).toContain(`job_name: ${LOCAL_PROMETHEUS.job}`);
    expect(config.data.yaml).toContain(join(prometheusFiles(join(process.cwd(), '.stack')).targets, '*.json'));
  });

  it('scrapes a target added to the file_sd folder, with its labels, and drops it when the file goes', async () => {
    remove = writeScrapeTargets(join(process.cwd(), '.stack'), name, [{ targets: [`127.0.0.1:${port}`], labels: { smoke: name } }]);
    const [series] = await until('the target scraped', async () => {
      const found = await query(`smoke_requests_total{smoke="${name}"}`);
      return found.length > 0 ? found : undefined;
    });
    expect(series?.metric).toMatchObject({ job: LOCAL_PROMETHEUS.job, instance: `127.0.0.1:${port}`, smoke: name, path: '/x' });
    expect(series?.value[1]).toBe('42');

    remove();
    remove = undefined;
    await until('the target dropped', async () => {
      const response = await fetch(`${prometheus}/api/v1/targets?state=active`, { signal: AbortSignal.timeout(5_000) });
      const body = (await response.json()) as { data: { activeTargets: { labels: Record<string, string> }[] } };
      return body.data.activeTargets.some((t) => t.labels.smoke === name) ? undefined : true;
    });
  });

  it('refuses a target file name that could leave the folder', () => {
    expect(() => writeScrapeTargets(join(process.cwd(), '.stack'), '../escape', [])).toThrow(/scrape target file name/);
  });
});
