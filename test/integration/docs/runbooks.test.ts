/**
 * The runbooks in docs/runbooks/ cannot rot: every code block fenced as ```bash runbook runs here,
 * in order, in one bash per runbook, against the local stack (`stack env --export`), and a block
 * that exits non-zero fails the test with the runbook, the block and the output.
 *
 * - ```bash runbook          a step: run in order, with `set -eo pipefail`.
 * - ```bash runbook cleanup  run at the end whatever happened (an EXIT trap), errors ignored.
 * - ```bash (unmarked)       shown only: it needs a real cluster (kubectl, helm against production).
 *
 * Each runbook gets its own TOPIC_PREFIX, DATABASE_SCHEMA, GOVERNANCE archive bucket, agents folder
 * and Kubernetes namespace (RUNBOOK_NAMESPACE, on the stack's API server), all removed afterwards
 * (with the prefix's topics, ACLs and subjects, and the schemas and replication slots named after
 * its schema), so the runbooks are safe on the shared stack and in any order. The structure is
 * checked too: the sections every runbook has, the alerts it names exist in the chart's
 * PrometheusRule (whose runbook_url links exist), and every `agent-manager …` command it shows exists.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { Kafka } from 'kafkajs';
import pg from 'pg';
import { initArchiveBucket } from '../../../lib/archive/bucket.ts';
import { aclPlan, deleteAcls } from '../../../lib/contracts/acls.ts';
import { killAgents } from '../../support/fleet.ts';
import { deleteNamespace, stackHelmBinary, uniqueNamespace } from '../../support/kube.ts';
import { removeTestBucket, testS3Client } from '../../support/s3.ts';
import { testEnv, testKafkaConfig, uniqueName } from '../../support/stack.ts';

const ROOT = process.cwd();
const RUNBOOKS = join(ROOT, 'docs', 'runbooks');
const PROMETHEUS_RULE = join(ROOT, 'charts', 'agent-manager', 'templates', 'prometheusrule.yaml');
/** The longest one runbook may take; each aims at well under two minutes. */
const RUNBOOK_DEADLINE_MS = 270_000;

jest.setTimeout(RUNBOOK_DEADLINE_MS + 60_000);

interface RunbookBlock {
  readonly kind: 'step' | 'cleanup';
  /** 1-based line of the opening fence in the markdown. */
  readonly line: number;
  readonly code: string;
}

interface CodeBlock {
  readonly info: string;
  readonly line: number;
  readonly code: string;
}

/**
 * The fenced code blocks of a markdown text (CommonMark fences: three or more backticks or tildes,
 * closed by a fence of the same character at least as long), with their info strings.
 */
function codeBlocks(markdown: string): CodeBlock[] {
  const lines = markdown.split('\n');
  const blocks: CodeBlock[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^ {0,3}(`{3,}|~{3,})\s*(.*)$/.exec(lines[i] ?? '');
    if (!open) continue;
    const fence = open[1] ?? '```';
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length; j++) {
      const close = /^ {0,3}(`{3,}|~{3,})\s*$/.exec(lines[j] ?? '');
      if (close && close[1]?.[0] === fence[0] && (close[1]?.length ?? 0) >= fence.length) break;
      body.push(lines[j] ?? '');
    }
    blocks.push({ info: (open[2] ?? '').trim(), line: i + 1, code: body.join('\n') });
    i = j;
  }
  return blocks;
}

/** The blocks the test runs: info string `bash runbook` (a step) or `bash runbook cleanup`. */
function runbookBlocks(markdown: string): RunbookBlock[] {
  const out: RunbookBlock[] = [];
  for (const block of codeBlocks(markdown)) {
    const words = block.info.split(/\s+/);
    if (words[0] !== 'bash' || words[1] !== 'runbook') continue;
    if (words.length > 3 || (words[2] !== undefined && words[2] !== 'cleanup')) throw new Error(`line ${block.line}: unknown runbook fence "${block.info}" (bash runbook, or bash runbook cleanup)`);
    out.push({ kind: words[2] === 'cleanup' ? 'cleanup' : 'step', line: block.line, code: block.code });
  }
  return out;
}

/** The bash script of a runbook: its steps in order, its cleanup blocks in an EXIT trap. */
function runbookScript(blocks: readonly RunbookBlock[], stateFile: string, isolation: Record<string, string>): string {
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const cleanup = blocks.filter((b) => b.kind === 'cleanup');
  return [
    'set -eo pipefail',
    '__rb_block=0',
    '__rb_cleanup() {',
    '  set +e +o pipefail',
    ...cleanup.map((b) => `  echo "+++ cleanup (line ${b.line})"\n${b.code}\n  :`),
    '}',
    `trap '__rb_rc=$?; echo "$__rb_block" > ${q(stateFile)}; __rb_cleanup; exit $__rb_rc' EXIT`,
    // The local stack's addresses and the operator's credentials, then this runbook's own names.
    'eval "$(npx agent-manager stack env --export)"',
    ...Object.entries(isolation).map(([k, v]) => `export ${k}=${q(v)}`),
    ...blocks.flatMap((b, i) => (b.kind === 'step' ? [`__rb_block=${i + 1}`, `echo "+++ block ${i + 1} (line ${b.line}) $(date -u +%T)"`, b.code] : [])),
    '__rb_block=done',
    'echo "+++ done $(date -u +%T)"',
  ].join('\n');
}

interface RunResult {
  readonly code: number | null;
  readonly output: string;
  readonly timedOut: boolean;
  readonly ms: number;
}

/** Runs `script` in its own process group; whatever it left running is ended with the group. */
function runBash(script: string, cwd: string, timeoutMs: number): Promise<RunResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn('bash', ['--noprofile', '--norc', '-c', script], { cwd, detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env } });
    const chunks: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => chunks.push(c));
    child.stderr.on('data', (c: Buffer) => chunks.push(c));
    let timedOut = false;
    const killGroup = (signal: NodeJS.Signals) => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, signal);
      } catch {
        // The group is gone already.
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup('SIGTERM');
      setTimeout(() => killGroup('SIGKILL'), 10_000).unref();
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      const ms = Date.now() - started;
      // Background jobs of the runbook (a service, pg_receivewal) end with it; then its output is complete.
      killGroup('SIGTERM');
      const done = () => resolve({ code, output: Buffer.concat(chunks).toString('utf8'), timedOut, ms });
      const late = setTimeout(() => {
        killGroup('SIGKILL');
        done();
      }, 5_000);
      child.on('close', () => {
        clearTimeout(late);
        done();
      });
    });
  });
}

/** The superuser URL of the stack's Postgres (the runbooks' replication slots need it to be dropped). */
function superuserUrl(databaseUrl: string): string {
  const url = new URL(databaseUrl);
  url.username = 'postgres';
  url.password = '';
  url.pathname = '/postgres';
  return url.toString();
}

/** Removes everything named after a runbook's isolation: schemas, replication slots, topics, ACLs, subjects. */
async function removeIsolation(prefix: string, schema: string): Promise<void> {
  const env = testEnv();
  const client = new pg.Client({ connectionString: superuserUrl(env.DATABASE_URL ?? '') });
  await client.connect();
  try {
    const like = `${schema.replace(/_/g, '\\_')}%`;
    const slots = await client.query<{ slot_name: string }>('SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE $1', [like]);
    for (const { slot_name } of slots.rows) await client.query('SELECT pg_drop_replication_slot($1)', [slot_name]).catch(() => undefined);
    // Every database: a runbook may restore or rebuild into a scratch schema of its own name.
    const schemas = await client.query<{ nspname: string }>('SELECT nspname FROM pg_namespace WHERE nspname LIKE $1', [like]);
    for (const { nspname } of schemas.rows) await client.query(`DROP SCHEMA IF EXISTS "${nspname}" CASCADE`).catch(() => undefined);
  } finally {
    await client.end();
  }
  const fleet = new pg.Client({ connectionString: env.DATABASE_URL });
  await fleet.connect();
  try {
    const like = `${schema.replace(/_/g, '\\_')}%`;
    const schemas = await fleet.query<{ nspname: string }>('SELECT nspname FROM pg_namespace WHERE nspname LIKE $1', [like]);
    for (const { nspname } of schemas.rows) await fleet.query(`DROP SCHEMA IF EXISTS "${nspname}" CASCADE`).catch(() => undefined);
  } finally {
    await fleet.end();
  }
  const admin = new Kafka(testKafkaConfig('runbooks-teardown')).admin();
  await admin.connect();
  try {
    const mine = (await admin.listTopics()).filter((t) => t.startsWith(prefix));
    if (mine.length > 0) await admin.deleteTopics({ topics: mine }).catch(() => undefined);
    await deleteAcls(admin, aclPlan({ prefix })).catch(() => undefined);
  } finally {
    await admin.disconnect();
  }
  const registry = env.SCHEMA_REGISTRY_URL ?? '';
  const subjects: unknown = await fetch(`${registry}/subjects`)
    .then((r): Promise<unknown> => r.json())
    .catch(() => []);
  for (const subject of Array.isArray(subjects) ? subjects : []) {
    if (typeof subject === 'string' && subject.startsWith(prefix)) await fetch(`${registry}/subjects/${encodeURIComponent(subject)}`, { method: 'DELETE' }).catch(() => undefined);
  }
}

/**
 * The commands of the CLI as paths (`audit reindex`, `stack env`, `demo`…), from its own command
 * tree (commander is ES-only, so read in a Node process of its own rather than through Jest).
 */
function cliCommands(): Set<string> {
  const program = `
    const { buildCli } = await import('./cli/main.ts');
    const paths = [];
    const walk = (command, path) => { for (const sub of command.commands) { const here = [...path, sub.name()]; paths.push(here.join(' ')); walk(sub, here); } };
    walk(buildCli(process.cwd(), () => undefined), []);
    console.log(JSON.stringify(paths));
    process.exit(0);`;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', program], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  return new Set(JSON.parse(out) as string[]);
}

const runbookFiles = (): string[] =>
  readdirSync(RUNBOOKS)
    .filter((f) => f.endsWith('.md') && f !== 'README.md')
    .sort();

describe('runbooks: structure', () => {
  const alerts = new Set([...readFileSync(PROMETHEUS_RULE, 'utf8').matchAll(/- alert: (\w+)/g)].map((m) => m[1] ?? ''));
  const commands = cliCommands();

  test('there are runbooks', () => {
    expect(runbookFiles().length).toBeGreaterThanOrEqual(4);
  });

  test("every runbook_url of the chart's alerts names a runbook that exists", () => {
    const linked = [...readFileSync(PROMETHEUS_RULE, 'utf8').matchAll(/runbook_url: \{\{ \$runbooks \}\}\/([\w.-]+)/g)].map((m) => m[1] ?? '');
    expect(linked.length).toBeGreaterThan(0);
    for (const file of linked) expect({ file, exists: runbookFiles().includes(file) }).toEqual({ file, exists: true });
  });

  test.each(runbookFiles())('%s: sections, alerts and commands are real', (file) => {
    const text = readFileSync(join(RUNBOOKS, file), 'utf8');
    const headings = [...text.matchAll(/^#{1,4} (.+)$/gm)].map((m) => m[1] ?? '');
    for (const section of [/symptom/i, /diagnos/i, /action|remed|respon|recover|rollback|restore|rotat/i, /verif/i]) {
      expect({ file, section: String(section), found: headings.some((h) => section.test(h)) }).toEqual({ file, section: String(section), found: true });
    }
    for (const [, alert] of text.matchAll(/\b(AgentManager[A-Z]\w+)\b/g)) expect({ file, alert, exists: alerts.has(alert ?? '') }).toEqual({ file, alert, exists: true });
    expect(runbookBlocks(text).filter((b) => b.kind === 'step').length).toBeGreaterThan(0);
    // Every `agent-manager <command> [<subcommand>]` shown in a shell block is a command of the CLI.
    for (const block of codeBlocks(text).filter((b) => /^(bash|sh|shell)\b/.test(b.info))) {
      for (const [, words] of block.code.matchAll(/(?:\bnpx|--)\s+agent-manager((?: +[a-z][a-z-]*){1,2})/g)) {
        const [first, second] = (words ?? '').trim().split(/ +/);
        const known = second !== undefined && commands.has(`${first} ${second}`) ? `${first} ${second}` : first;
        expect({ file, line: block.line, command: known, exists: commands.has(known ?? '') }).toEqual({ file, line: block.line, command: known, exists: true });
      }
    }
  });
});

describe('runbooks: the marked blocks run on the local stack', () => {
  const s3 = testS3Client();
  afterAll(() => s3.destroy());

  test.each(runbookFiles())('%s', async (file) => {
    const name = basename(file, '.md');
    const blocks = runbookBlocks(readFileSync(join(RUNBOOKS, file), 'utf8'));
    const slug = name.split('-')[0] ?? 'rb';
    const prefix = `${uniqueName(`rb-${slug}`)}.`;
    const schema = uniqueName(`rb_${slug}`).replace(/[^a-z0-9_]/g, '_');
    const bucket = uniqueName(`rb-${slug}`);
    const namespace = uniqueNamespace(`rb-${slug}`);
    const work = mkdtempSync(join(tmpdir(), `runbook-${slug}-`));
    const stateFile = join(work, 'block');
    const agentsDir = join(work, 'agents');
    await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 1 } });
    let result: RunResult | undefined;
    try {
      const script = runbookScript(blocks, stateFile, {
        TOPIC_PREFIX: prefix,
        DATABASE_SCHEMA: schema,
        ARCHIVE_BUCKET: bucket,
        PROVISIONER_STATE_DIR: agentsDir,
        HTTP_PORT: '0',
        LOG_LEVEL: 'warn',
        // A Kubernetes namespace of its own on the stack's API server (KUBECONFIG from stack env), and its helm.
        RUNBOOK_NAMESPACE: namespace,
        PATH: `${dirname(stackHelmBinary())}:${process.env.PATH ?? ''}`,
      });
      writeFileSync(join(work, 'script.sh'), script);
      result = await runBash(script, ROOT, RUNBOOK_DEADLINE_MS);
      console.log(`${file}: ${blocks.length} marked blocks, exit ${result.code}, ${(result.ms / 1000).toFixed(1)} s`);
      // RUNBOOKS_SHOW_OUTPUT=1 prints what a passing runbook printed, too.
      if (process.env.RUNBOOKS_SHOW_OUTPUT === '1') console.log(result.output);
      if (result.code !== 0) {
        const state = (() => {
          try {
            return readFileSync(stateFile, 'utf8').trim();
          } catch {
            return '?';
          }
        })();
        const block = blocks[Number(state) - 1];
        const where = block ? `block ${state} (line ${block.line}):\n${block.code}` : `block ${state}`;
        const tail = result.output.split('\n').slice(-150).join('\n');
        throw new Error(`${file}: ${result.timedOut ? `timed out after ${RUNBOOK_DEADLINE_MS} ms in` : `exit ${result.code} in`} ${where}\n--- output (last 150 lines) ---\n${tail}`);
      }
    } finally {
      killAgents(agentsDir);
      // No namespace controller runs on the stack: the namespace is emptied and finalized by hand.
      await deleteNamespace(namespace).catch(() => undefined);
      await removeIsolation(prefix, schema);
      await removeTestBucket(s3, bucket);
      rmSync(work, { recursive: true, force: true });
    }
  });
});
