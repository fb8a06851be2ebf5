/**
 * Housekeeping, on one replica at a time (a transaction-level advisory lock): removes blobs that
 * no job refers to once their grace period is over, and puts back in the queue jobs whose worker
 * vanished without their work item coming back (a lost message).
 */
import { advisoryKey, transaction, type Sql } from "@coursemesh/shared/db.ts";
import type { Logger } from "@coursemesh/shared/logger.ts";
import type { DocumentStore } from "./document-store.ts";
import { enqueueWork } from "./job-events.ts";
import { deleteBlobRows, knownBlobs, lockAbandonedJobs, lockUnreferencedBlobs, requeueJob } from "./store.ts";

export interface SweepOptions {
  sql: Sql;
  documents: DocumentStore;
  logger: Logger;
  /** Blobs untouched for this long and referenced by no job are removed. */
  blobGraceMs: number;
  /** A PROCESSING job whose lease ran out this long ago is queued again. */
  abandonedAfterMs: number;
}

export interface SweepResult {
  blobsRemoved: number;
  orphansRemoved: number;
  jobsRequeued: number;
  /** False when another replica held the sweep lock. */
  ran: boolean;
}

const BATCH = 100;

/** One sweep; safe to run from every replica at once (only one does the work). */
export async function sweepOnce(options: SweepOptions): Promise<SweepResult> {
  const { sql, documents } = options;
  const result: SweepResult = { blobsRemoved: 0, orphansRemoved: 0, jobsRequeued: 0, ran: false };
  await transaction(sql, "ingest.sweep", async (tx) => {
    const [lock] = await tx`select pg_try_advisory_xact_lock(${advisoryKey("coursemesh.ingest.sweep").toString()}::bigint) as held`;
    if (!lock?.held) return;
    result.ran = true;
    const cutoff = new Date(Date.now() - options.blobGraceMs);

    const unreferenced = await lockUnreferencedBlobs(tx, cutoff, BATCH);
    for (const sha256 of unreferenced) await documents.delete(sha256);
    if (unreferenced.length) await deleteBlobRows(tx, unreferenced);
    result.blobsRemoved = unreferenced.length;

    // Objects without a row (their row went, their delete did not): nothing can refer to them.
    const stored = (await documents.list()).filter((object) => object.modifiedAt < cutoff);
    if (stored.length) {
      const known = await knownBlobs(tx, stored.map((object) => object.sha256));
      for (const object of stored) {
        if (known.has(object.sha256)) continue;
        await documents.delete(object.sha256);
        result.orphansRemoved++;
      }
    }

    const abandoned = await lockAbandonedJobs(tx, new Date(Date.now() - options.abandonedAfterMs), BATCH);
    for (const job of abandoned) {
      const queued = await requeueJob(tx, job.id, { message: "queued again: its worker stopped answering", newGeneration: false, resetAttempts: false });
      await enqueueWork(tx, queued);
    }
    result.jobsRequeued = abandoned.length;
  });
  if (result.blobsRemoved || result.orphansRemoved || result.jobsRequeued) options.logger.info(result, "sweep done");
  return result;
}

/** Sweeps every `intervalMs` (with jitter, so replicas do not line up) until stopped. */
export function startSweeper(options: SweepOptions & { intervalMs: number }): { stop(): Promise<void> } {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let current: Promise<unknown> = Promise.resolve();
  let stopped = false;
  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      current = sweepOnce(options)
        .catch((error) => options.logger.warn({ err: error }, "sweep failed; trying again later"))
        .finally(schedule);
    }, options.intervalMs * (0.8 + Math.random() * 0.4));
  };
  schedule();
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await current;
    },
  };
}
