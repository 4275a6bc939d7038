import { Writable } from 'node:stream';
import { permanentError } from '../../../../lib/errors.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { createMetrics } from '../../../../lib/metrics.ts';
import { startKeyRotationSchedule } from '../../../../lib/signing/rotation.ts';
import type { PublicKeyVersion, Signer } from '../../../../lib/signing/signer.ts';

const DAY = 24 * 3600 * 1000;
const NOW = Date.parse('2026-12-01T06:00:00Z');

/** A signer whose versions are given by their creation times; rotate adds one "now" or fails. */
function fakeSigner(created: (string | undefined)[], rotation: { fail?: boolean } = {}): Signer & { rotations: number } {
  const versions: PublicKeyVersion[] = created.map((createdAt, i) => ({ keyId: 'k', version: i + 1, publicKey: '', ...(createdAt !== undefined ? { createdAt } : {}) }));
  return {
    keyId: 'k',
    kind: 'local',
    rotations: 0,
    currentVersion: async () => versions.length,
    sign: async () => {
      throw new Error('not used');
    },
    publicKeys: async () => [...versions],
    async rotate() {
      if (rotation.fail === true) throw permanentError('VAULT_FORBIDDEN', 'Vault refused rotating (403)');
      this.rotations++;
      versions.push({ keyId: 'k', version: versions.length + 1, publicKey: '', createdAt: new Date(NOW).toISOString() });
      return versions.length;
    },
  };
}

function setup(signer: Signer, options: { intervalMs?: number; enabled?: () => boolean } = {}) {
  const metrics = createMetrics('test', { defaultMetrics: false });
  const lines: string[] = [];
  const logger = createLogger('test', 'info', new Writable({ write: (chunk: Buffer, _e, done) => (lines.push(chunk.toString()), done()) }));
  // A check interval far away: the test drives `check()` itself.
  const schedule = startKeyRotationSchedule({ signer, intervalMs: options.intervalMs ?? 30 * DAY, metrics, logger, checkEveryMs: 3_600_000, now: () => NOW, ...(options.enabled ? { enabled: options.enabled } : {}) });
  return { schedule, metrics, lines };
}

const metric = async (metrics: ReturnType<typeof createMetrics>, name: string) => {
  const found = (await metrics.registry.getMetricsAsJSON()).find((m) => m.name === name);
  return found?.values[0]?.value;
};

describe('scheduled key rotation', () => {
  it('leaves a version younger than the interval alone, and publishes its creation time', async () => {
    const created = new Date(NOW - 10 * DAY).toISOString();
    const signer = fakeSigner([created]);
    const { schedule, metrics } = setup(signer);
    try {
      expect(await schedule.check()).toEqual({ outcome: 'fresh', version: 1, ageMs: 10 * DAY });
      expect(signer.rotations).toBe(0);
      expect(await metric(metrics, 'agent_manager_signing_key_last_rotation_timestamp_seconds')).toBe(Date.parse(created) / 1000);
    } finally {
      schedule.stop();
    }
  });

  it('rotates a version older than the interval, once', async () => {
    const signer = fakeSigner([new Date(NOW - 40 * DAY).toISOString(), new Date(NOW - 31 * DAY).toISOString()]);
    const { schedule, metrics, lines } = setup(signer);
    try {
      // The check that ran at start, then this one: only one rotation, and nothing to do after it.
      const result = await schedule.check();
      expect(['rotated', 'fresh']).toContain(result.outcome);
      expect(signer.rotations).toBe(1);
      expect(await schedule.check()).toMatchObject({ outcome: 'fresh', version: 3 });
      expect(await metric(metrics, 'agent_manager_signing_key_last_rotation_timestamp_seconds')).toBe(NOW / 1000);
      expect(await metric(metrics, 'agent_manager_key_rotation_failures_total')).toBe(0);
      expect(lines.join('')).toContain('signing key rotated (scheduled)');
    } finally {
      schedule.stop();
    }
  });

  it('counts and logs a failed rotation, and tries again at the next check', async () => {
    const signer = fakeSigner([new Date(NOW - 31 * DAY).toISOString()], { fail: true });
    const { schedule, metrics, lines } = setup(signer);
    try {
      expect(await schedule.check()).toEqual({ outcome: 'failed', code: 'VAULT_FORBIDDEN' });
      expect(await schedule.check()).toEqual({ outcome: 'failed', code: 'VAULT_FORBIDDEN' });
      // Two checks here, plus the one at start (it may or may not have finished before the first).
      expect(await metric(metrics, 'agent_manager_key_rotation_failures_total')).toBeGreaterThanOrEqual(2);
      expect(lines.join('')).toContain('signing key rotation failed rotating');
    } finally {
      schedule.stop();
    }
  });

  it('skips when disabled (interval 0, or `enabled` false) and when the age is unknown', async () => {
    const stale = new Date(NOW - 90 * DAY).toISOString();
    const off = setup(fakeSigner([stale]), { intervalMs: 0 });
    expect(await off.schedule.check()).toEqual({ outcome: 'skipped' });
    off.schedule.stop();
    const follower = setup(fakeSigner([stale]), { enabled: () => false });
    expect(await follower.schedule.check()).toEqual({ outcome: 'skipped' });
    follower.schedule.stop();
    const unknown = setup(fakeSigner([undefined]));
    expect(await unknown.schedule.check()).toEqual({ outcome: 'unknown-age', version: 1 });
    unknown.schedule.stop();
  });
});
