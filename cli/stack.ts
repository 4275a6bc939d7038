import type { Command } from 'commander';
import { permanentError } from '../lib/errors.ts';

/**
 * The local stack's code (and its development-only dependencies, such as node-forge for the stack's
 * CA) is loaded only by the commands that use it: a deployed image runs `agent-manager run` without it.
 */
const devStack = () => import('../dev/stack/index.ts');
const devEndpoints = () => import('../dev/stack/endpoints.ts');

const elapsed = (since: number) => `${((Date.now() - since) / 1000).toFixed(1)}s`;

function progressPrinter(): (line: string) => void {
  const started = Date.now();
  return (line) => console.log(`[stack +${elapsed(started)}] ${line}`);
}

/** `stack up`: returns false when a component failed (each failure was already reported). */
export async function runStackUp(root: string, optional: readonly string[] = []): Promise<boolean> {
  const started = Date.now();
  const { stackComponents, stackContext, stackUp } = await devStack();
  const ctx = stackContext(root, progressPrinter());
  const results = await stackUp(ctx, stackComponents(optional));
  const failed = results.filter((r) => r.outcome === 'failed');
  console.log(
    failed.length === 0
      ? `stack up: all ${results.length} components healthy in ${elapsed(started)}`
      : `stack up: ${failed.length} of ${results.length} components failed (${failed.map((f) => f.component).join(', ')}); see the lines above`,
  );
  return failed.length === 0;
}

/** Prints one line per component; returns whether all are healthy. */
export async function printStatus(root: string): Promise<boolean> {
  const { allStackComponents, isOptionalComponent, stackContext, stackStatus } = await devStack();
  const statuses = await stackStatus(stackContext(root, () => undefined), allStackComponents());
  // An optional component that is simply not started is listed, but does not fail the check.
  const off = (s: (typeof statuses)[number]) => isOptionalComponent(s.name) && s.health === 'down' && s.owner === 'none';
  const rows = statuses.map((s) => [s.name, off(s) ? `off (stack up --with ${s.name})` : s.health, s.address, s.owner === 'stack' ? `pid ${s.pid}` : s.owner, s.version]);
  const header = ['COMPONENT', 'HEALTH', 'ADDRESS', 'OWNER', 'VERSION'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  for (const row of [header, ...rows]) console.log(row.map((cell, i) => String(cell).padEnd(widths[i] ?? 0)).join('  ').trimEnd());
  return statuses.every((s) => s.health === 'healthy' || off(s));
}

export function registerStackCommands(program: Command, root: string, setExitCode: (code: number) => void): void {
  const stack = program
    .command('stack')
    .description('The local stack: real Kafka, Schema Registry, Postgres, Redis and S3 on loopback (and, when asked, a Kubernetes API server), data in .stack/.');

  stack
    .command('up')
    .description('Install what is missing and start every component (reuses what already runs).')
    .option('--with <components>', 'also start optional components, comma-separated: kube (etcd + kube-apiserver, no kubelet), containers (podman with a Docker-compatible socket), prometheus (scrapes .stack/prometheus/targets/*.json; PROMETHEUS_URL); see dev/stack/index.ts')
    .action(async (options: { with?: string }) => {
      const optional = (options.with ?? '').split(',').map((name) => name.trim()).filter((name) => name !== '');
      setExitCode((await runStackUp(root, optional)) ? 0 : 1);
    });

  stack
    .command('down')
    .description('Stop the components this stack started (servers it reused are left alone).')
    .action(async () => {
      const { allStackComponents, stackContext, stackDown } = await devStack();
      await stackDown(stackContext(root, progressPrinter()), allStackComponents());
    });

  stack
    .command('status')
    .description('Print each component with its address and health; exits 1 unless all are healthy.')
    .action(async () => {
      setExitCode((await printStatus(root)) ? 0 : 1);
    });

  stack
    .command('env')
    .description(
      'Print the environment variables that point the services at the stack. Kafka: the bootstrap address, KAFKA_SECURITY_PROTOCOL=ssl and the ' +
        "PEM files (CA, certificate, key) of a principal: the operator's (a super user) unless --as names another; AGENT_KAFKA_SSL_* are the agents' own, " +
        "handed by the provisioner to the agents it starts; KERNEL_KAFKA_SSL_* the Kernel's.",
    )
    .option('--export', 'print `export KEY=value` lines, for `eval "$(npx agent-manager stack env --export)"`')
    .option('--as <principal>', 'connect to Kafka as this principal: admin (the operator), kernel, ingest, provisioner, heartbeat, archiver or agent', 'admin')
    .option('--librdkafka', "print the principal's Kafka client properties in librdkafka's terms instead (bootstrap.servers, security.protocol, ssl.*.location)")
    .action(async (options: { export?: boolean; as: string; librdkafka?: boolean }) => {
      const { kafkaStackEnv, STACK_PRINCIPALS } = await devEndpoints();
      const principal = STACK_PRINCIPALS.find((p) => p === options.as && p !== 'broker');
      if (principal === undefined) throw permanentError('USAGE', `unknown principal "${options.as}": expected ${STACK_PRINCIPALS.filter((p) => p !== 'broker').join(', ')}`);
      const { allStackComponents, stackContext, stackEnv } = await devStack();
      const ctx = stackContext(root, () => undefined);
      const env = { ...stackEnv(ctx, allStackComponents()), ...kafkaStackEnv(ctx.stackDir, principal) };
      if (options.librdkafka) {
        console.log(`# librdkafka properties of User:${principal} on the local stack`);
        console.log(`bootstrap.servers=${env.KAFKA_BROKERS}`);
        console.log('security.protocol=ssl');
        console.log(`ssl.ca.location=${env.KAFKA_SSL_CA_FILE}`);
        console.log(`ssl.certificate.location=${env.KAFKA_SSL_CERT_FILE}`);
        console.log(`ssl.key.location=${env.KAFKA_SSL_KEY_FILE}`);
        return;
      }
      for (const [key, value] of Object.entries(env)) console.log(options.export ? `export ${key}='${value}'` : `${key}=${value}`);
    });
}
