/**
 * `agent-manager release acceptance` (deploy.yml's acceptance step) against a real fleet on the
 * local stack: ingest serving its mTLS API and the provisioner running real agent processes (local
 * driver). Passes through instantiate → RUNNING → destroy → DESTROYED; fails, naming the answer,
 * for a client whose certificate has no identity.
 */
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import type { ServiceContext } from '../../../lib/service/context.ts';
import { startServices } from '../../../cli/services.ts';
import { createTestPki, writeServerFiles, type PkiFiles } from '../../support/certs.ts';
import { createFleetWorld, within, type FleetWorld } from '../../support/fleet.ts';

const ROOT = join(__dirname, '..', '..', '..');

jest.setTimeout(300_000);

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function cli(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(ROOT, 'bin', 'agent-manager.js'), 'release', 'acceptance', ...args], { cwd: ROOT, timeout: 240_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr });
    });
  });
}

/** A port nothing listens on right now (the API needs a fixed one). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address !== null ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

let world: FleetWorld;
let fleet: ServiceContext;
let files: PkiFiles;
let port: number;
const client = (name: string) => ['--cert', join(files.dir, `${name}.pem`), '--key', join(files.dir, `${name}-key.pem`), '--ca', files.caFile];
const common = () => ['--api', `https://127.0.0.1:${port}`, '--division', 'platform', '--region', 'local', '--image', 'registry.internal/agents/echo:1.0', '--timeout', '180'];

beforeAll(async () => {
  const pki = createTestPki();
  files = writeServerFiles(pki);
  for (const [name, pair] of [['kernel', pki.clients.kernel], ['stranger', pki.clients.stranger]] as const) {
    writeFileSync(join(files.dir, `${name}.pem`), pair.cert);
    writeFileSync(join(files.dir, `${name}-key.pem`), pair.key, { mode: 0o600 });
  }
  port = await freePort();
  world = await createFleetWorld('acceptance', {
    INGEST_TLS_CERT_FILE: files.serverCertFile,
    INGEST_TLS_KEY_FILE: files.serverKeyFile,
    INGEST_TLS_CA_FILE: files.caFile,
    INGEST_API_HOST: '127.0.0.1',
    INGEST_API_PORT: String(port),
  });
  fleet = await within('fleet start', 90_000, startServices(['ingest', 'provisioner'], world.env, { opsServer: false }));
}, 300_000);

afterAll(async () => {
  await fleet?.shutdown();
  await world?.teardown();
  files?.remove();
});

test('passes: an agent instantiated, RUNNING, destroyed and DESTROYED through the API', async () => {
  const run = await cli([...common(), ...client('kernel')]);
  if (run.code !== 0) throw new Error(`release acceptance exited ${run.code}:\n${run.stdout}${run.stderr}`);
  expect(run.stdout).toMatch(/\[acceptance\] agent [0-9a-f-]{36}: RUNNING/);
  expect(run.stdout).toMatch(/release acceptance: passed: agent [0-9a-f-]{36} RUNNING after [\d.]+ s, DESTROYED [\d.]+ s after its destroy/);
  expect(run.code).toBe(0);
});

test('fails, naming the answer, when the client has no identity', async () => {
  const run = await cli([...common(), ...client('stranger')]);
  expect(run.code).toBe(1);
  expect(run.stderr).toMatch(/acceptance: POST \/v1\/requests \(INSTANTIATE\) answered 403/);
});
