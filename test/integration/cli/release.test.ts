/**
 * The multisig release gate end to end through the CLI (`agent-manager release keygen|manifest|sign|verify`),
 * as maintainers and release.yml run it: three maintainers, 2 of 3 required; each refusal with its
 * reason and exit 1; the break-glass path with its own key set, a higher threshold and its audit log.
 * No stack needed: files in a temporary folder only.
 */
import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ROOT = join(__dirname, '..', '..', '..');
const IMAGE_DIGEST = `sha256:${'1'.repeat(64)}`;
const CHART_DIGEST = `sha256:${'2'.repeat(64)}`;
const COMMIT = 'c'.repeat(40);

jest.setTimeout(600_000);

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** The CLI as an operator runs it (its own process; generous timeout on a loaded 2-core machine). */
function cli(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(ROOT, 'bin', 'agent-manager.js'), 'release', ...args], { cwd: ROOT, timeout: 300_000, env: { ...process.env, GITHUB_ACTOR: 'ci-bot' } }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
      resolve({ code, stdout, stderr });
    });
  });
}

let work: string;
const path = (...parts: string[]) => join(work, ...parts);
const manifestArgs = (manifest = path('manifest.json')) => ['--manifest', manifest];

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'release-cli-'));
  // Three maintainers and a separate break-glass set of four, each key made by the CLI.
  const made = await Promise.all([
    ...['alice', 'bob', 'carol'].map((name) => cli('keygen', '--name', name, '--out', path('private'))),
    ...['dan', 'erin', 'fay', 'gus'].map((name) => cli('keygen', '--name', name, '--out', path('bg-private'))),
    cli('keygen', '--name', 'mallory', '--out', path('mallory')),
  ]);
  for (const run of made) {
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/release keygen: \w+ sha256:[0-9a-f]{64}/);
  }
  mkdirSync(path('keys'));
  mkdirSync(path('bg-keys'));
  for (const name of ['alice', 'bob', 'carol']) cpSync(path('private', `${name}.pub`), path('keys', `${name}.pub`));
  for (const name of ['dan', 'erin', 'fay', 'gus']) cpSync(path('bg-private', `${name}.pub`), path('bg-keys', `${name}.pub`));

  const manifest = await cli(
    'manifest',
    ...['--image-repository', 'ghcr.io/acme/agent-manager', '--image-digest', IMAGE_DIGEST],
    ...['--chart-repository', 'oci://ghcr.io/acme/charts/agent-manager', '--chart-version', '1.4.0', '--chart-digest', CHART_DIGEST],
    ...['--commit', COMMIT, '--ref', 'refs/tags/v1.4.0', '--out', path('manifest.json')],
  );
  expect(manifest.code).toBe(0);
  expect(manifest.stdout).toMatch(/wrote .*manifest\.json \(sha256:[0-9a-f]{64}\)/);
});

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

const sign = (name: string, out: string, key = path('private', `${name}.key`), manifest = path('manifest.json')) => cli('sign', ...manifestArgs(manifest), '--key', key, '--out', out);
const verify = (signatures: string, ...extra: string[]) => cli('verify', ...manifestArgs(), '--signatures', signatures, '--keys', path('keys'), '--threshold', '2', ...extra);

test('keygen writes a private key only its owner can read and refuses to overwrite it', async () => {
  expect(statSync(path('private', 'alice.key')).mode & 0o777).toBe(0o600);
  expect(readFileSync(path('private', 'alice.pub'), 'utf8')).toMatch(/^-----BEGIN PUBLIC KEY-----/);
  const again = await cli('keygen', '--name', 'alice', '--out', path('private'));
  expect(again.code).toBe(1);
  expect(again.stderr).toMatch(/already exists: not overwritten/);
});

test('the manifest is canonical JSON of the image, the chart and the commit', () => {
  const text = readFileSync(path('manifest.json'), 'utf8');
  expect(JSON.parse(text)).toEqual({
    schema: 'agent-manager.release-manifest/v1',
    commit: COMMIT,
    ref: 'refs/tags/v1.4.0',
    image: { repository: 'ghcr.io/acme/agent-manager', digest: IMAGE_DIGEST },
    chart: { repository: 'oci://ghcr.io/acme/charts/agent-manager', version: '1.4.0', digest: CHART_DIGEST },
  });
  expect(text).toMatch(/^\{"chart":\{"digest":"sha256:2{64}","repository":.*\}\n$/);
});

test('2 of 3 maintainers: accepted; 1 of 3: refused as too few', async () => {
  const signed = await Promise.all([sign('alice', path('sigs', 'alice.sig.json')), sign('bob', path('sigs', 'bob.sig.json'))]);
  for (const run of signed) expect(run.code).toBe(0);
  mkdirSync(path('one'));
  cpSync(path('sigs', 'alice.sig.json'), path('one', 'alice.sig.json'));

  const [accepted, tooFew] = await Promise.all([
    verify(path('sigs'), '--expect-image-digest', IMAGE_DIGEST, '--expect-chart-digest', CHART_DIGEST, '--expect-commit', COMMIT),
    verify(path('one')),
  ]);
  expect(accepted.code).toBe(0);
  expect(accepted.stdout).toMatch(/release verify: OK, 2 valid signature\(s\) of 3 trusted key\(s\), 2 required \(alice, bob\)/);
  expect(tooFew.code).toBe(1);
  expect(tooFew.stderr).toMatch(/FAIL {2}RELEASE_TOO_FEW_SIGNATURES: 1 valid signature\(s\) from distinct trusted keys \(alice\); 2 of 3 are required/);
  expect(tooFew.stdout).toMatch(/REFUSED/);
});

test('refused with its reason: duplicate, unknown key, forged, manifest edited after signing, manifest not what is released', async () => {
  // alice twice (and bob, so the threshold alone would pass).
  mkdirSync(path('duplicate'));
  cpSync(path('sigs', 'alice.sig.json'), path('duplicate', 'alice.sig.json'));
  cpSync(path('sigs', 'alice.sig.json'), path('duplicate', 'alice-copy.sig.json'));
  cpSync(path('sigs', 'bob.sig.json'), path('duplicate', 'bob.sig.json'));
  // mallory's key is not trusted.
  const unknown = await sign('mallory', path('unknown', 'mallory.sig.json'), path('mallory', 'mallory.key'));
  expect(unknown.code).toBe(0);
  cpSync(path('sigs', 'alice.sig.json'), path('unknown', 'alice.sig.json'));
  // mallory's signature passed off as carol's.
  mkdirSync(path('forged'));
  const mallorys = JSON.parse(readFileSync(path('unknown', 'mallory.sig.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(path('forged', 'carol.sig.json'), JSON.stringify({ ...mallorys, signer: 'carol', keyId: await carolKeyId() }));
  cpSync(path('sigs', 'alice.sig.json'), path('forged', 'alice.sig.json'));
  // The manifest edited after alice and bob signed it.
  const edited = JSON.parse(readFileSync(path('manifest.json'), 'utf8')) as { image: { digest: string } };
  edited.image.digest = `sha256:${'9'.repeat(64)}`;
  writeFileSync(path('edited.json'), JSON.stringify(edited));

  const [duplicate, unknownKey, forgery, other, mismatch] = await Promise.all([
    verify(path('duplicate')),
    verify(path('unknown')),
    verify(path('forged')),
    cli('verify', ...manifestArgs(path('edited.json')), '--signatures', path('sigs'), '--keys', path('keys'), '--threshold', '2'),
    verify(path('sigs'), '--expect-image-digest', `sha256:${'3'.repeat(64)}`, '--expect-commit', COMMIT),
  ]);
  for (const run of [duplicate, unknownKey, forgery, other, mismatch]) expect(run.code).toBe(1);
  expect(duplicate.stderr).toMatch(/RELEASE_DUPLICATE_SIGNATURE: alice signed 2 times/);
  expect(unknownKey.stderr).toMatch(/RELEASE_UNKNOWN_KEY: .*mallory\.sig\.json: signed by "mallory" with key sha256:[0-9a-f]{64}, which is not one of the 3 trusted keys/);
  expect(forgery.stderr).toMatch(/RELEASE_FORGED_SIGNATURE: .*carol\.sig\.json: the signature does not verify with carol's key/);
  expect(other.stderr).toMatch(/RELEASE_SIGNATURE_OTHER_MANIFEST: .*the manifest changed after signing/);
  expect(mismatch.stderr).toMatch(/RELEASE_MANIFEST_MISMATCH: the manifest's image digest is sha256:1{64}, but what is being released has sha256:3{64}/);
  expect(mismatch.stderr).not.toMatch(/commit is/);
});

/** carol's keyId, from a signature she makes. */
async function carolKeyId(): Promise<string> {
  const run = await sign('carol', path('carol-only', 'carol.sig.json'));
  expect(run.code).toBe(0);
  return (JSON.parse(readFileSync(path('carol-only', 'carol.sig.json'), 'utf8')) as { keyId: string }).keyId;
}

test('break-glass: the separate set with 3 of 4 is accepted, and every attempt is in the audit log', async () => {
  const signed = await Promise.all(['dan', 'erin', 'fay'].map((name) => sign(name, path('bg-sigs', `${name}.sig.json`), path('bg-private', `${name}.key`))));
  for (const run of signed) expect(run.code).toBe(0);
  const auditLog = path('audit', 'break-glass.jsonl');
  const breakGlass = (signatures: string, threshold: string, ...extra: string[]) =>
    cli('verify', '--break-glass', ...manifestArgs(), '--signatures', signatures, '--keys', path('bg-keys'), '--threshold', threshold,
      '--normal-keys', path('keys'), '--normal-threshold', '2', '--reason', 'CVE hotfix, maintainers unreachable', '--audit-log', auditLog, ...extra);

  const accepted = await breakGlass(path('bg-sigs'), '3', '--expect-image-digest', IMAGE_DIGEST);
  expect(accepted.code).toBe(0);
  expect(accepted.stdout).toMatch(/release verify \(BREAK-GLASS\): OK, 3 valid signature\(s\) of 4 trusted key\(s\), 3 required/);
  expect(accepted.stdout).toMatch(/audit record \(accepted\) appended to/);

  // The maintainers' 2 signatures are no use on the emergency path, and its threshold may not be the normal one.
  const refused = await breakGlass(path('sigs'), '2');
  expect(refused.code).toBe(1);
  expect(refused.stderr).toMatch(/RELEASE_BREAK_GLASS_THRESHOLD_TOO_LOW: the break-glass threshold 2 must be higher than the normal threshold 2/);
  expect(refused.stderr).toMatch(/RELEASE_UNKNOWN_KEY/);

  const records = readFileSync(auditLog, 'utf8').trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
  expect(records).toHaveLength(2);
  expect(records[0]).toMatchObject({ action: 'release.break_glass', outcome: 'accepted', actor: 'ci-bot', reason: 'CVE hotfix, maintainers unreachable', threshold: 3 });
  expect((records[0]?.signers as { name: string }[]).map((s) => s.name).sort()).toEqual(['dan', 'erin', 'fay']);
  expect(records[1]).toMatchObject({ outcome: 'refused', threshold: 2 });
});

test('break-glass needs its reason and audit log; they are refused without --break-glass', async () => {
  const [noReason, stray] = await Promise.all([
    cli('verify', '--break-glass', ...manifestArgs(), '--signatures', path('bg-sigs'), '--keys', path('bg-keys'), '--threshold', '3', '--normal-keys', path('keys'), '--normal-threshold', '2'),
    verify(path('sigs'), '--reason', 'why not'),
  ]);
  expect(noReason.code).toBe(1);
  expect(noReason.stderr).toMatch(/--break-glass needs --reason, --audit-log/);
  expect(stray.code).toBe(1);
  expect(stray.stderr).toMatch(/go with --break-glass only/);
  expect(existsSync(path('audit', 'none.jsonl'))).toBe(false);
});
