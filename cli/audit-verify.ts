/**
 * `agent-manager audit verify --from DAY --to DAY [--json] [--public-keys FILE]`: recomputes the
 * archive's integrity from S3 (every object version, file, event, chain, manifest and signature) and
 * checks the Postgres index against it (lib/archive/verify-archive.ts). Progress per day on stderr;
 * the report on stdout. Exit 0 intact (information findings allowed), 1 findings, 2 usage, 3 could
 * not verify (S3, Postgres or the signer unreachable, an unreadable keys file).
 */
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { createS3Client } from '../lib/archive/s3.ts';
import { isArchiveDay } from '../lib/archive/layout.ts';
import { verifyArchive, type DayReport, type VerifyReport } from '../lib/archive/verify-archive.ts';
import { revocationId, type Finding } from '../lib/archive/verify.ts';
import { loadConfig } from '../lib/config.ts';
import { createPool } from '../lib/db/pool.ts';
import { errorMessage, permanentError } from '../lib/errors.ts';
import { createSignerFromConfig, signerConfigShape } from '../lib/signing/config.ts';
import { listRevocations } from '../lib/signing/revocations.ts';
import type { PublicKeyVersion } from '../lib/signing/signer.ts';
import { parsePublicKeysDocument } from '../lib/signing/verify.ts';
import { withDefaultArchivePrefix } from '../services/archiver/config.ts';
import { resolvedServiceEnv } from './services.ts';
import { archiveReadConfigShape } from './audit-config.ts';

export const VERIFY_EXIT = { intact: 0, findings: 1, usage: 2, incomplete: 3 } as const;

/** What `audit verify` reads: the index, the archive, and (without --public-keys) the signer's public keys. */
const verifyConfigShape = {
  ...archiveReadConfigShape,
};

interface VerifyOptions {
  from: string;
  to: string;
  json?: boolean;
  publicKeys?: string;
}

const number = (n: number) => n.toLocaleString('en');

/** The progress line of a day (stderr). */
export function formatDayProgress(day: DayReport): string {
  const errors = day.findings.filter((f) => f.severity === 'error').length;
  const manifest = day.manifest === 'none' ? 'no manifest' : day.signedKeyVersion !== undefined ? `manifest ${day.manifest} (v${day.signedKeyVersion})` : `manifest ${day.manifest}`;
  return `${day.day}  ${day.status.padEnd(6)}  ${manifest}  ${number(day.files)} files  ${number(day.events)} events  ${errors === 0 ? 'ok' : `${errors} finding${errors === 1 ? '' : 's'}`}`;
}

function where(f: Finding): string {
  return [f.partition !== undefined ? `p=${f.partition}` : undefined, f.offset !== undefined ? `offset ${f.offset}` : undefined, f.key].filter((x) => x !== undefined).join(' ');
}

/** The human report (stdout): one line per finding, then the verdict. */
export function formatVerifyReport(report: VerifyReport): string[] {
  const out: string[] = [];
  const errors = report.findings.filter((f) => f.severity === 'error');
  const info = report.findings.filter((f) => f.severity === 'info');
  for (const f of [...errors, ...info]) {
    const at = where(f);
    out.push(`${f.severity === 'error' ? 'FAIL' : 'info'}  ${f.kind}  ${f.day}${at === '' ? '' : `  ${at}`}`, `      ${f.message}`);
  }
  if (out.length > 0) out.push('');
  const rate = report.seconds > 0 ? `, ${number(Math.round(report.eventsPerSecond))} events/s` : '';
  out.push(`verified s3://${report.bucket}/${report.root} ${report.from} to ${report.to}: ${report.days.length} days, ${number(report.files)} files, ${number(report.events)} events in ${report.seconds.toFixed(1)} s${rate}`);
  if (report.days.length === 0) out.push(`no archive day between ${report.from} and ${report.to} (nothing in s3://${report.bucket}/${report.root}/, audit_days or audit_files)`);
  const open = report.days.filter((d) => d.status === 'open').map((d) => d.day);
  if (open.length > 0) out.push(`open (verified as far as they go): ${open.join(', ')}`);
  out.push(report.intact ? `INTACT${info.length > 0 ? ` (${info.length} information finding${info.length === 1 ? '' : 's'})` : ''}` : `NOT INTACT: ${errors.length} finding${errors.length === 1 ? '' : 's'} (${[...new Set(errors.map((f) => f.kind))].join(', ')})`);
  return out;
}

export function registerAuditVerifyCommand(audit: Command, setExitCode: (code: number) => void): void {
  audit
    .command('verify')
    .requiredOption('--from <day>', 'first day (YYYY-MM-DD)')
    .requiredOption('--to <day>', 'last day (YYYY-MM-DD), inclusive')
    .option('--json', 'the report as one JSON document')
    .option('--public-keys <file>', 'verify signatures with this public keys file (`agent-manager keys public --json`) instead of asking the signer; revocations it lists count with those in Postgres')
    .description(
      'Recomputes the archive from S3 alone: every object version of the days, every file (SHA-256, offsets), every event (its hash), the hash chains across files and days, ' +
        'the manifests and their signatures (unknown, invalid or revoked keys), and checks the Postgres index (audit_index, audit_files) against it. ' +
        'A day still open is verified as far as it goes and reported open. Progress on stderr. ' +
        'Exit 0 intact (information findings allowed), 1 findings, 2 usage, 3 could not verify.',
    )
    .action(async (options: VerifyOptions, command: Command) => {
      for (const [name, day] of [['--from', options.from], ['--to', options.to]] as const) {
        if (!isArchiveDay(day)) return command.error(`error: ${name} '${day}' is not a day (YYYY-MM-DD)`, { exitCode: VERIFY_EXIT.usage, code: 'agent-manager.usage' });
      }
      if (options.from > options.to) return command.error(`error: --from ${options.from} is after --to ${options.to}`, { exitCode: VERIFY_EXIT.usage, code: 'agent-manager.usage' });

      let report: VerifyReport;
      try {
        report = await runVerify(options);
      } catch (error) {
        console.error(`agent-manager: audit verify could not complete: ${errorMessage(error)}`);
        setExitCode(VERIFY_EXIT.incomplete);
        return;
      }
      if (options.json === true) console.log(JSON.stringify(report, null, 2));
      else for (const line of formatVerifyReport(report)) console.log(line);
      setExitCode(report.intact ? VERIFY_EXIT.intact : VERIFY_EXIT.findings);
    });
}

async function runVerify(options: VerifyOptions): Promise<VerifyReport> {
  const env = withDefaultArchivePrefix(await resolvedServiceEnv());
  const config = loadConfig(verifyConfigShape, env);
  let publicKeys: PublicKeyVersion[];
  const revoked = new Set<string>();
  if (options.publicKeys !== undefined) {
    const keys = parsePublicKeysDocument(await readFile(options.publicKeys, 'utf8'));
    for (const key of keys) if (key.revoked !== undefined) revoked.add(revocationId(key.keyId, key.version));
    publicKeys = keys;
  } else {
    try {
      publicKeys = await createSignerFromConfig(loadConfig(signerConfigShape, env)).publicKeys();
    } catch (error) {
      throw permanentError('AUDIT_VERIFY_KEYS_UNAVAILABLE', `the signer's public keys: ${errorMessage(error)} (or verify offline with --public-keys FILE, from \`agent-manager keys public --json\`)`, error);
    }
  }
  const pool = createPool({ connectionString: config.DATABASE_URL, schema: config.DATABASE_SCHEMA, max: 2 });
  const s3 = createS3Client(config);
  try {
    for (const r of await listRevocations(pool)) revoked.add(revocationId(r.keyId, r.keyVersion));
    return await verifyArchive({
      s3,
      bucket: config.ARCHIVE_BUCKET,
      root: config.ARCHIVE_PREFIX,
      db: pool,
      from: options.from,
      to: options.to,
      publicKeys,
      revoked,
      progress: (day) => console.error(formatDayProgress(day)),
    });
  } finally {
    s3.destroy();
    await pool.end();
  }
}
