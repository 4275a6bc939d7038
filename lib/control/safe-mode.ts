import { buildAuditEvent } from '../audit.ts';
import { withTransaction, type Pool } from '../db/pool.ts';
import { errorMessage } from '../errors.ts';
import type { AvroCodec } from '../kafka/avro.ts';
import type { Logger } from '../logger.ts';
import { enqueueEvents } from '../outbox/outbox.ts';

/**
 * Safe mode: an operator's switch, stored in Postgres (`control` row `safe_mode`) and polled by every
 * service. While on, the provisioner applies no commands (its partitions pause; the commands wait in
 * Kafka) and signing is suspended; reads keep working. Every toggle is audited in the same
 * transaction as the change.
 */
export interface SafeModeState {
  readonly enabled: boolean;
  readonly reason: string;
  readonly updatedBy: string;
  readonly updatedAt: Date;
}

interface ControlRow {
  value: { enabled?: boolean; reason?: string };
  updated_by: string;
  updated_at: Date;
}

export async function readSafeMode(pool: Pool): Promise<SafeModeState> {
  const { rows } = await pool.query<ControlRow>(`SELECT value, updated_by, updated_at FROM control WHERE key = 'safe_mode'`);
  const row = rows[0];
  if (!row) return { enabled: false, reason: '', updatedBy: 'nobody', updatedAt: new Date(0) };
  return { enabled: row.value.enabled === true, reason: row.value.reason ?? '', updatedBy: row.updated_by, updatedAt: row.updated_at };
}

export interface SetSafeModeOptions {
  readonly enabled: boolean;
  readonly reason: string;
  readonly actor: string;
  readonly codec: AvroCodec;
  /** The audit topic (prefix-aware). */
  readonly auditTopic: string;
}

/** Turns safe mode on or off and audits the change; returns the state before. */
export async function setSafeMode(pool: Pool, options: SetSafeModeOptions): Promise<SafeModeState> {
  const before = await readSafeMode(pool);
  await withTransaction(pool, async (client) => {
    await client.query(
      `INSERT INTO control (key, value, updated_by, updated_at) VALUES ('safe_mode', $1, $2, now())
       ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_by = EXCLUDED.updated_by, updated_at = now()`,
      [JSON.stringify({ enabled: options.enabled, reason: options.reason }), options.actor],
    );
    const audit = buildAuditEvent({
      actor: options.actor,
      action: options.enabled ? 'safe_mode.enabled' : 'safe_mode.disabled',
      agentId: null,
      requestId: null,
      traceId: null,
      payload: { enabled: options.enabled, reason: options.reason, wasEnabled: before.enabled },
    });
    await enqueueEvents(client, options.codec, [{ topic: options.auditTopic, key: 'safe-mode', value: audit, eventId: audit.eventId }]);
  });
  return before;
}

export interface SafeModeWatcher {
  current(): boolean;
  stop(): void;
}

/** Polls the switch and calls `onChange` on every change (and once with the first reading). */
export function watchSafeMode(pool: Pool, options: { intervalMs: number; logger: Logger; onChange: (state: SafeModeState) => void | Promise<void> }): SafeModeWatcher {
  // `enabled`: the state last applied; `wanted`: the state last read. On while either says on.
  let enabled: boolean | undefined;
  let wanted = false;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  /** Failed polls in a row: an outage is logged when it starts and when it ends, not on every poll. */
  let failures = 0;
  const poll = async () => {
    try {
      const state = await readSafeMode(pool);
      if (failures > 0) options.logger.info({ failedPolls: failures }, 'safe mode read again');
      failures = 0;
      wanted = state.enabled;
      if (state.enabled !== enabled) {
        options.logger.warn({ safeMode: state.enabled, reason: state.reason, by: state.updatedBy }, state.enabled ? 'safe mode ON' : 'safe mode off');
        // Recorded only once applied: a change that failed half-way is applied again at the next poll.
        await options.onChange(state);
        enabled = state.enabled;
      }
    } catch (error) {
      // Keep the last known state: a database blip must not release held commands.
      if (failures++ === 0) options.logger.warn({ err: errorMessage(error) }, 'safe mode not read or not applied; keeping the last known state, retrying');
    }
    if (!stopped) {
      timer = setTimeout(() => void poll(), options.intervalMs);
      timer.unref();
    }
  };
  void poll();
  return {
    current: () => wanted || enabled === true,
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
