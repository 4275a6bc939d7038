/**
 * `agent-manager release …`: the release pipeline's own commands, run from a checkout by the
 * maintainers and by .github/workflows/release.yml and deploy.yml, never by a deployed service.
 * Their logic lives in dev/release/ and is loaded only when a command runs.
 *
 * Multisig gating (dev/release/multisig.ts): `manifest` writes what is released (image digest, chart
 * digest, git commit) as canonical JSON, each maintainer `sign`s it with their own Ed25519 key
 * (`keygen`), and `verify` accepts it only with M valid signatures from distinct trusted keys and
 * nothing suspicious in the set. `verify --break-glass` is the audited emergency path.
 */
import { execFileSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import { basename, dirname, join } from 'node:path';
import type { Command } from 'commander';
import { errorMessage, permanentError } from '../lib/errors.ts';
import { registerCanaryCheckCommand } from './release-canary.ts';
import type { KeySet, VerifyResult } from '../dev/release/multisig.ts';

const multisig = () => import('../dev/release/multisig.ts');

function readText(file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    throw permanentError('RELEASE_FILE_UNREADABLE', `cannot read ${what} ${file}: ${errorMessage(error)}`, error);
  }
}

function listFiles(dir: string, suffix: string, what: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (error) {
    throw permanentError('RELEASE_FILE_UNREADABLE', `cannot read the ${what} folder ${dir}: ${errorMessage(error)}`, error);
  }
  return names.filter((name) => name.endsWith(suffix)).sort().map((name) => join(dir, name));
}

/** Every `*.pub` in the folder; a key's name is its file name without `.pub`. */
async function loadKeysFrom(dir: string): Promise<KeySet> {
  const { loadKeySet } = await multisig();
  const files = listFiles(dir, '.pub', 'keys');
  if (files.length === 0) throw permanentError('RELEASE_NO_KEYS', `no trusted keys (*.pub) in ${dir}`);
  return loadKeySet(files.map((file) => ({ name: basename(file, '.pub'), pem: readText(file, 'the key') })));
}

/** A whole number ≥ 1 given on the command line. */
function parseThreshold(text: string, option: string): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < 1) throw permanentError('RELEASE_USAGE', `${option} expects a whole number ≥ 1, not '${text}'`);
  return value;
}

function gitHead(root: string): string {
  try {
    return execFileSync('git', ['rev-parse', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
  } catch (error) {
    throw permanentError('RELEASE_USAGE', `--commit not given and \`git rev-parse HEAD\` failed: ${errorMessage(error)}`, error);
  }
}

function writeNew(file: string, content: string, mode: number): void {
  mkdirSync(dirname(file), { recursive: true });
  try {
    writeFileSync(file, content, { mode, flag: 'wx' });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw permanentError('RELEASE_FILE_EXISTS', `${file} already exists: not overwritten`);
    throw error;
  }
}

function printResult(result: VerifyResult, keys: KeySet, label: string): void {
  for (const signature of result.accepted) console.log(`  ok    ${signature.name.padEnd(16)} ${signature.keyId}  ${signature.file}`);
  for (const problem of result.problems) console.error(`  FAIL  ${problem.code}: ${problem.message}`);
  console.log(
    result.ok
      ? `${label}: OK, ${result.accepted.length} valid signature(s) of ${keys.size} trusted key(s), ${result.threshold} required (${result.accepted.map((s) => s.name).join(', ')})`
      : `${label}: REFUSED (${result.problems.length} problem(s), listed above): nothing may be released with this manifest`,
  );
}

interface VerifyOptions {
  manifest: string;
  signatures: string;
  keys: string;
  threshold: string;
  expectImageDigest?: string;
  expectChartDigest?: string;
  expectCommit?: string;
  breakGlass?: boolean;
  normalKeys?: string;
  normalThreshold?: string;
  reason?: string;
  auditLog?: string;
  actor?: string;
  json?: boolean;
}

export function registerReleaseCommands(program: Command, root: string, setExitCode: (code: number) => void): Command {
  const release = program.command('release').description('Release tooling: the multisig release gate (manifest, keygen, sign, verify) and the canary analysis.');

  release
    .command('manifest')
    .description('Write the release manifest (canonical JSON: image and chart by digest, the git commit) that the maintainers sign.')
    .requiredOption('--image-repository <repo>', 'the image repository, e.g. ghcr.io/acme/agent-manager')
    .requiredOption('--image-digest <digest>', 'the image (index) digest, sha256:…')
    .requiredOption('--chart-repository <ref>', 'the chart OCI repository, e.g. oci://ghcr.io/acme/charts/agent-manager')
    .requiredOption('--chart-version <version>', 'the chart version')
    .requiredOption('--chart-digest <digest>', 'the chart OCI manifest digest (what `helm push` prints), sha256:…')
    .option('--commit <sha>', 'the git commit built (default: git rev-parse HEAD)')
    .option('--ref <ref>', 'the ref released, e.g. refs/tags/v1.4.0')
    .option('--out <file>', 'write the manifest here (default: print it)')
    .action(async (options: { imageRepository: string; imageDigest: string; chartRepository: string; chartVersion: string; chartDigest: string; commit?: string; ref?: string; out?: string }) => {
      const { buildManifest, canonicalManifest, manifestDigest } = await multisig();
      const manifest = buildManifest({
        commit: options.commit ?? gitHead(root),
        ref: options.ref,
        imageRepository: options.imageRepository,
        imageDigest: options.imageDigest,
        chartRepository: options.chartRepository,
        chartVersion: options.chartVersion,
        chartDigest: options.chartDigest,
      });
      const text = `${canonicalManifest(manifest)}\n`;
      if (options.out === undefined) {
        process.stdout.write(text);
      } else {
        mkdirSync(dirname(options.out), { recursive: true });
        writeFileSync(options.out, text);
        console.log(`release manifest: wrote ${options.out} (${manifestDigest(manifest)})`);
      }
      setExitCode(0);
    });

  release
    .command('keygen')
    .description('Make a maintainer\'s Ed25519 key pair: DIR/NAME.key (private, mode 0600, keep it offline) and DIR/NAME.pub (goes into the trusted keys folder).')
    .requiredOption('--name <name>', 'the maintainer (letters, digits, . _ -)')
    .requiredOption('--out <dir>', 'the folder to write the two files into')
    .action(async (options: { name: string; out: string }) => {
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(options.name)) throw permanentError('RELEASE_USAGE', `--name '${options.name}': letters, digits, '.', '_' and '-' only`);
      const { generateKey } = await multisig();
      const key = generateKey();
      const privateFile = join(options.out, `${options.name}.key`);
      const publicFile = join(options.out, `${options.name}.pub`);
      if (existsSync(privateFile) || existsSync(publicFile)) throw permanentError('RELEASE_FILE_EXISTS', `${privateFile} or ${publicFile} already exists: not overwritten`);
      writeNew(privateFile, key.privatePem, 0o600);
      writeNew(publicFile, key.publicPem, 0o644);
      console.log(`release keygen: ${options.name} ${key.keyId}\n  private: ${privateFile}\n  public:  ${publicFile}`);
      setExitCode(0);
    });

  release
    .command('sign')
    .description('Sign a release manifest with one maintainer key; check the manifest\'s digests and commit yourself first.')
    .requiredOption('--manifest <file>', 'the release manifest')
    .requiredOption('--key <file>', 'your private key (from release keygen)')
    .requiredOption('--out <file>', 'the signature file to write (verify reads DIR/*.sig.json)')
    .option('--name <name>', 'your name in the signature (default: the key file\'s name)')
    .action(async (options: { manifest: string; key: string; out: string; name?: string }) => {
      const { parseManifest, signManifest } = await multisig();
      const manifest = parseManifest(readText(options.manifest, 'the manifest'), options.manifest);
      const signature = signManifest(manifest, readText(options.key, 'the key'), options.name ?? basename(options.key).replace(/\.key$/, ''));
      writeNew(options.out, `${JSON.stringify(signature, null, 2)}\n`, 0o644);
      console.log(`release sign: ${signature.signer} (${signature.keyId}) signed ${signature.manifestDigest} -> ${options.out}`);
      console.log(`  commit ${manifest.commit}, image ${manifest.image.repository}@${manifest.image.digest}, chart ${manifest.chart.repository}:${manifest.chart.version}@${manifest.chart.digest}`);
      setExitCode(0);
    });

  release
    .command('verify')
    .description(
      'Accept a release manifest only with THRESHOLD valid signatures (DIR/*.sig.json) from distinct trusted keys (DIR/*.pub); refuse on too few, ' +
        'duplicate, unknown-key, forged or other-manifest signatures, and on a manifest that differs from what is released (--expect-*). Exit 0 accepted, 1 refused. ' +
        'With --break-glass: the emergency key set and its higher threshold, a reason, and an audit record appended to --audit-log whatever the outcome.',
    )
    .requiredOption('--manifest <file>', 'the release manifest')
    .requiredOption('--signatures <dir>', 'the folder of signature files (*.sig.json)')
    .requiredOption('--keys <dir>', 'the trusted public keys (*.pub): the maintainers\', or with --break-glass the emergency set')
    .requiredOption('--threshold <m>', 'how many distinct valid signatures are required')
    .option('--expect-image-digest <digest>', 'the digest of the image actually being released')
    .option('--expect-chart-digest <digest>', 'the digest of the chart actually being released')
    .option('--expect-commit <sha>', 'the commit actually being released')
    .option('--break-glass', 'the emergency path: needs --normal-keys, --normal-threshold, --reason and --audit-log')
    .option('--normal-keys <dir>', 'break-glass: the maintainers\' keys, which the emergency set must not share')
    .option('--normal-threshold <n>', 'break-glass: the normal threshold, which --threshold must exceed')
    .option('--reason <text>', 'break-glass: why (goes into the audit record)')
    .option('--audit-log <file>', 'break-glass: append the audit record (one JSON line) here')
    .option('--actor <name>', 'break-glass: who runs it (default: $GITHUB_ACTOR or the OS user)')
    .option('--json', 'print the result as JSON')
    .action(async (options: VerifyOptions) => {
      const { breakGlassPolicyProblems, breakGlassRecord, checkThreshold, parseManifest, verifyRelease } = await multisig();
      const threshold = parseThreshold(options.threshold, '--threshold');
      let normal: { keys: KeySet; threshold: number } | undefined;
      if (options.breakGlass) {
        const missing = (['normalKeys', 'normalThreshold', 'reason', 'auditLog'] as const).filter((key) => !options[key]?.trim());
        if (missing.length > 0) {
          const flags = missing.map((key) => `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
          throw permanentError('RELEASE_USAGE', `--break-glass needs ${flags.join(', ')}`);
        }
        normal = { keys: await loadKeysFrom(options.normalKeys ?? ''), threshold: parseThreshold(options.normalThreshold ?? '', '--normal-threshold') };
        checkThreshold(normal.threshold, normal.keys, 'normal threshold');
      } else if (options.normalKeys || options.normalThreshold || options.reason || options.auditLog) {
        throw permanentError('RELEASE_USAGE', '--normal-keys, --normal-threshold, --reason and --audit-log go with --break-glass only');
      }

      const manifest = parseManifest(readText(options.manifest, 'the manifest'), options.manifest);
      const keys = await loadKeysFrom(options.keys);
      const signatures = listFiles(options.signatures, '.sig.json', 'signatures').map((file) => ({ file, text: readText(file, 'the signature') }));
      const verified = verifyRelease({
        manifest,
        signatures,
        keys,
        threshold,
        expect: { imageDigest: options.expectImageDigest, chartDigest: options.expectChartDigest, commit: options.expectCommit },
      });
      // The emergency path's own rules come first: a break-glass set that overlaps the maintainers' or has a lower threshold is refused.
      const policy = normal ? breakGlassPolicyProblems({ keys, threshold }, normal) : [];
      const result: VerifyResult = { ...verified, ok: verified.ok && policy.length === 0, problems: [...policy, ...verified.problems] };
      const label = normal ? 'release verify (BREAK-GLASS)' : 'release verify';

      if (options.json) {
        console.log(JSON.stringify({ ...result, breakGlass: normal !== undefined, manifest }));
      } else {
        console.log(`${label}: manifest ${result.manifestDigest} (commit ${manifest.commit}, image ${manifest.image.digest}, chart ${manifest.chart.version} ${manifest.chart.digest})`);
        printResult(result, keys, label);
      }

      if (normal) {
        const actor = options.actor ?? process.env.GITHUB_ACTOR ?? userInfo().username;
        const record = breakGlassRecord(result, manifest, { actor, reason: options.reason ?? '', time: new Date() });
        const auditLog = options.auditLog ?? '';
        mkdirSync(dirname(auditLog), { recursive: true });
        // One JSON line, appended (O_APPEND): earlier records are never rewritten.
        appendFileSync(auditLog, `${JSON.stringify(record)}\n`);
        if (!options.json) console.log(`${label}: audit record (${record.outcome}) appended to ${auditLog}`);
      }
      setExitCode(result.ok ? 0 : 1);
    });

  registerCanaryCheckCommand(release, setExitCode);

  release
    .command('acceptance')
    .description(
      'Acceptance test of a deployed environment through its ingest API (mTLS): instantiate one agent, wait for RUNNING, destroy it, wait for DESTROYED. ' +
        'Exit 0 passed, 1 failed (the step and the agent named).',
    )
    .requiredOption('--api <url>', 'the ingest API, e.g. https://agent-manager.staging.internal:8443')
    .requiredOption('--cert <file>', 'the client certificate (PEM): an identity allowed INSTANTIATE, DESTROY and reads in --division')
    .requiredOption('--key <file>', 'its private key (PEM)')
    .requiredOption('--ca <file>', 'the CA of the API\'s certificate (PEM)')
    .option('--division <name>', 'the division of the test agent', 'acceptance')
    .option('--region <name>', 'the region of the test agent', 'eu-west-1')
    .option('--template <name>', 'a known template to instantiate (INGEST_KNOWN_TEMPLATES)', 'support-assistant')
    .option('--image <ref>', 'an image to run instead of --template')
    .option('--timeout <seconds>', 'the longest wait for RUNNING, then for DESTROYED', '300')
    .action(async (options: { api: string; cert: string; key: string; ca: string; division: string; region: string; template: string; image?: string; timeout: string }) => {
      const timeoutMs = parseThreshold(options.timeout, '--timeout') * 1000;
      const { runAcceptance } = await import('../dev/release/acceptance.ts');
      const result = await runAcceptance({
        api: options.api,
        tls: { cert: readText(options.cert, 'the certificate'), key: readText(options.key, 'the key'), ca: readText(options.ca, 'the CA') },
        division: options.division,
        region: options.region,
        spec: options.image === undefined ? { template: options.template } : { image: options.image },
        timeoutMs,
        log: (line) => console.log(`[acceptance] ${line}`),
      });
      console.log(
        `release acceptance: passed: agent ${result.agentId} RUNNING after ${(result.runningAfterMs / 1000).toFixed(1)} s, DESTROYED ${(result.destroyedAfterMs / 1000).toFixed(1)} s after its destroy`,
      );
      setExitCode(0);
    });

  return release;
}
