/**
 * History retention: each replica periodically deletes finished notifications (SENT, FAILED,
 * COALESCED, SUPPRESSED) older than NOTIFIER_HISTORY_RETENTION_DAYS, a bounded batch per statement.
 * PENDING rows (due, retrying or mid-send) are never touched. The retention is never shorter than
 * what recent rows are still read for: the unique (event, channel, recipient) row that makes a
 * redelivered event a no-op (an event can come back until its stream's max_age), the coalescing
 * window and the per-recipient rate-cap window.
 */
import { Counter } from "prom-client";
import type { Sql } from "@coursemesh/shared/db";
import { STREAM_DEFINITIONS, type StreamName } from "@coursemesh/shared/events/index";
import type { Logger } from "@coursemesh/shared/logger";
import { registry } from "@coursemesh/shared/metrics";
import { Wakeup } from "@coursemesh/shared/wakeup.ts";
import { RATE_WINDOW_MS } from "./sender.ts";
import * as store from "./store.ts";

export const DAY_MS = 24 * 60 * 60 * 1000;
/** Rows per DELETE: short statements, short locks, bounded WAL per transaction. */
export const PRUNE_BATCH_SIZE = 1000;

const prunedTotal = new Counter({
  name: "notifier_history_pruned_total",
  help: "Finished notifications deleted from the history for being older than the retention, by status.",
  labelNames: ["status"] as const,
  registers: [registry],
});

/** The shortest retention (whole days) longer than every window recent history is read for. */
export function minimumRetentionDays(streams: StreamName[], coalesceMs: number): number {
  const windowMs = Math.max(RATE_WINDOW_MS, coalesceMs, ...streams.map((s) => STREAM_DEFINITIONS[s].maxAgeMs));
  return Math.floor(windowMs / DAY_MS) + 1;
}

/** The retention to use: the configured one, or the minimum if that is shorter (`raised` says so). */
export function effectiveRetentionDays(configured: number, minimum: number): { days: number; raised: boolean } {
  return configured >= minimum ? { days: configured, raised: false } : { days: minimum, raised: true };
}

export interface PrunerOptions {
  sql: Sql;
  logger: Logger;
  retentionDays: number;
  intervalMs: number;
  batchSize?: number;
}

export interface Pruner {
  /** Stops the loop after the statement in flight. */
  stop(): Promise<void>;
}

/** Starts the prune loop: one sweep at start, then one per interval. */
export function startPruner(options: PrunerOptions): Pruner {
  const { sql, retentionDays, intervalMs } = options;
  const batchSize = options.batchSize ?? PRUNE_BATCH_SIZE;
  const log = options.logger.child({ component: "retention" });
  const wakeup = new Wakeup();
  let stopping = false;

  async function sweep(): Promise<void> {
    const before = new Date(Date.now() - retentionDays * DAY_MS);
    let deleted = 0;
    while (!stopping) {
      const statuses = await store.deleteFinishedBefore(sql, before, batchSize);
      for (const status of statuses) prunedTotal.inc({ status });
      deleted += statuses.length;
      if (statuses.length < batchSize) break;
    }
    if (deleted) log.info({ deleted, before: before.toISOString(), retentionDays }, "pruned notification history");
  }

  async function loop(): Promise<void> {
    while (!stopping) {
      try {
        await sweep();
      } catch (error) {
        log.warn({ err: error }, "history prune failed; retrying at the next interval");
      }
      await wakeup.wait(intervalMs);
    }
  }

  const running = loop();
  return {
    async stop() {
      stopping = true;
      wakeup.notify();
      await running;
    },
  };
}
