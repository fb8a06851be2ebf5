/**
 * Processing a work item from `work.ingest`: claim the job under a lease, read its PDFs on a worker
 * thread while reporting progress, and save the outline. A killed worker's job is taken over when
 * its message is redelivered; transient failures are retried with backoff and, after the last
 * attempt, the job FAILS and the work item goes to the DLQ; a bad PDF fails the job at once.
 */
import { hostname } from "node:os";
import type { Sql, Tx } from "@coursemesh/shared/db.ts";
import { transaction } from "@coursemesh/shared/db.ts";
import { PoisonEventError, type ConsumedEvent } from "@coursemesh/shared/events/index.ts";
import type { Logger } from "@coursemesh/shared/logger.ts";
import { withSpan } from "@coursemesh/shared/telemetry.ts";
import type { DocumentStore } from "./document-store.ts";
import { ExtractFailed, type ExtractPool, type ExtractStep } from "./extract-pool.ts";
import type { JobChanges } from "./job-changes.ts";
import { enqueueJobCompleted, enqueueJobFailed, type WorkItem } from "./job-events.ts";
import { isTerminal } from "./jobs.ts";
import { attemptSeconds, jobAttempts, pagesProcessed } from "./metrics.ts";
import { PdfError } from "./pdf-text.ts";
import {
  finishJob,
  getJobRow,
  insertCourse,
  listDocuments,
  lockJob,
  recordProgress,
  renewLease,
  requeueJob,
  setDocumentPages,
  startAttempt,
  type JobRow,
} from "./store.ts";

export interface ProcessorOptions {
  sql: Sql;
  documents: DocumentStore;
  pool: ExtractPool;
  changes: JobChanges;
  logger: Logger;
  /** How long a claim lasts without a heartbeat (the work consumer's ack wait). */
  leaseMs: number;
  /** Attempts before a job FAILS (and its work item is dead-lettered). */
  maxAttempts: number;
  /** Delay before the n-th retry (the consumer loop's nak delays; the last one repeats). */
  retryDelaysMs: number[];
  /** A job still running after this long is stopped and counts as a failed attempt. */
  jobTimeoutMs: number;
  /** Fewest milliseconds between two progress writes of one job. */
  progressIntervalMs?: number;
}

export interface JobProcessor {
  /** The consumer loop's handler; `tx` commits the job's completion with the work item's ack. */
  handle(tx: Tx, event: ConsumedEvent<WorkItem>): Promise<void>;
  /** Jobs running in this process. */
  running(): number;
  /** Stops every running job and puts it back in the queue for another worker (shutdown). */
  interruptAll(): void;
}

/** Why a running job stopped early. */
class Stop extends Error {
  constructor(
    readonly kind: "cancelled" | "shutdown" | "timeout",
    message: string,
  ) {
    super(message);
  }
}

type Claim = { kind: "claimed"; job: JobRow } | { kind: "skip"; why: string } | { kind: "busy"; job: JobRow } | { kind: "exhausted"; job: JobRow };

const describe = (error: unknown) => (error instanceof Error ? error.message : String(error));

function parseWorkItem(payload: unknown): WorkItem {
  const item = payload as Partial<WorkItem> | null;
  if (!item || typeof item.jobId !== "string" || !Number.isInteger(item.generation)) {
    throw new PoisonEventError(`work item ${JSON.stringify(payload)?.slice(0, 200)} has no jobId and generation`);
  }
  return { jobId: item.jobId, generation: item.generation! };
}

/** Progress of the whole job, 0–100, from the worker thread's steps. */
function percent(step: ExtractStep, done: number, total: number): { progress: number; message: string } {
  const fraction = total > 0 ? done / total : 1;
  if (step === "text") return { progress: 5 + Math.floor(80 * fraction), message: `extracting text ${done}/${total} pages` };
  if (step === "headings") return { progress: 85 + Math.floor(5 * fraction), message: `finding headings ${done}/${total} pages` };
  return { progress: 90, message: "building outline" };
}

/** Builds the handler for work items; it owns the lease, heartbeats, progress and outcome of each job. */
export function createJobProcessor(options: ProcessorOptions): JobProcessor {
  const { sql, logger } = options;
  const workerId = `${hostname()}:${process.pid}:${Bun.randomUUIDv7().slice(-12)}`;
  const active = new Map<string, AbortController>();
  const progressIntervalMs = options.progressIntervalMs ?? 250;

  async function claim(item: WorkItem): Promise<Claim> {
    return transaction(sql, "ingest.claim_job", async (tx) => {
      const job = await lockJob(tx, item.jobId);
      if (!job) return { kind: "skip", why: "the job no longer exists" };
      if (job.generation !== item.generation) return { kind: "skip", why: `stale work item (generation ${item.generation}, job at ${job.generation})` };
      if (isTerminal(job.status)) return { kind: "skip", why: `the job is already ${job.status}` };
      if (job.status === "PROCESSING" && job.leaseOwner !== workerId && job.leaseUntil && job.leaseUntil.getTime() > Date.now()) {
        return { kind: "busy", job };
      }
      if (job.attempts >= options.maxAttempts) {
        // Every attempt so far ended without an outcome (the worker was killed): give up rather than loop forever.
        const failed = await finishJob(tx, job.id, {
          status: "FAILED",
          message: "failed",
          error: `processing stopped ${job.attempts} times without finishing (the worker was restarted or crashed each time); retry the job, or split the document`,
          errorReason: "PROCESSING_FAILED",
        });
        await enqueueJobFailed(tx, failed);
        return { kind: "exhausted", job: failed };
      }
      return { kind: "claimed", job: await startAttempt(tx, job.id, workerId, options.leaseMs) };
    });
  }

  /** Writes progress at most every progressIntervalMs, in order, never going backwards. */
  function progressWriter(job: JobRow, onLost: () => void) {
    let chain = Promise.resolve();
    let lastWrite = 0;
    let queued: { progress: number; message: string } | undefined;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const write = () => {
      timer = undefined;
      const next = queued;
      queued = undefined;
      if (!next) return;
      lastWrite = performance.now();
      chain = chain.then(async () => {
        const held = await recordProgress(sql, job.id, workerId, next.progress, next.message).catch((error) => {
          logger.warn({ err: error, jobId: job.id }, "recording progress failed");
          return true;
        });
        if (!held) onLost();
      });
    };
    return {
      report(progress: number, message: string, immediately = false) {
        queued = { progress, message };
        if (immediately || performance.now() - lastWrite >= progressIntervalMs) {
          if (timer) clearTimeout(timer);
          write();
        } else {
          timer ??= setTimeout(write, progressIntervalMs - (performance.now() - lastWrite));
        }
      },
      async flush() {
        if (timer) clearTimeout(timer);
        write();
        await chain;
      },
      stop() {
        if (timer) clearTimeout(timer);
        queued = undefined;
      },
    };
  }

  async function fail(job: JobRow, reason: string, error: string): Promise<void> {
    await transaction(sql, "ingest.fail_job", async (tx) => {
      const current = await lockJob(tx, job.id);
      if (!current || current.generation !== job.generation || isTerminal(current.status)) return;
      const failed = await finishJob(tx, job.id, { status: "FAILED", message: "failed", error, errorReason: reason });
      await enqueueJobFailed(tx, failed);
    });
  }

  async function requeue(job: JobRow, message: string, undoAttempt: boolean): Promise<void> {
    await transaction(sql, "ingest.requeue_job", async (tx) => {
      const current = await lockJob(tx, job.id);
      if (!current || current.generation !== job.generation || current.status !== "PROCESSING" || current.leaseOwner !== workerId) return;
      await requeueJob(tx, job.id, { message, newGeneration: false, resetAttempts: false });
      // A restart is not the job's fault: it does not use up an attempt.
      if (undoAttempt) await tx`update jobs set attempts = greatest(attempts - 1, 0) where id = ${job.id}`;
    });
  }

  /** Pages of the saved outline; 0 when the job stopped being ours before the save. */
  async function run(tx: Tx, job: JobRow, item: WorkItem, controller: AbortController): Promise<number> {
    const signal = controller.signal;
    const stopIfNotOurs = async () => {
      const current = await getJobRow(sql, job.id).catch(() => undefined);
      if (!current) return;
      if (current.status === "CANCELLED") controller.abort(new Stop("cancelled", "the job was cancelled"));
      else if (current.generation !== item.generation || current.status !== "PROCESSING" || current.leaseOwner !== workerId) {
        controller.abort(new Stop("cancelled", "another worker took the job over"));
      }
    };
    const progress = progressWriter(job, () => void stopIfNotOurs());
    // Our own progress writes notify too (as PROCESSING): only a change of status needs a look.
    const unsubscribe = options.changes.subscribe(job.id, (status) => {
      if (status !== "PROCESSING") void stopIfNotOurs();
    });
    const heartbeat = setInterval(() => {
      renewLease(sql, job.id, workerId, options.leaseMs).then(
        (held) => {
          if (!held) void stopIfNotOurs();
        },
        (error) => logger.warn({ err: error, jobId: job.id }, "renewing the job's lease failed"),
      );
    }, Math.max(100, Math.floor(options.leaseMs / 3)));
    const timeout = setTimeout(
      () => controller.abort(new Stop("timeout", `processing took longer than ${Math.round(options.jobTimeoutMs / 1000)} s`)),
      options.jobTimeoutMs,
    );
    try {
      // A cancel that landed between the claim and the subscription.
      await stopIfNotOurs();
      signal.throwIfAborted();
      progress.report(1, "downloading documents", true);
      const stored = await listDocuments(sql, job.id);
      const documents = await Promise.all(stored.map(async (d) => ({ filename: d.filename, bytes: await options.documents.get(d.sha256) })));
      signal.throwIfAborted();
      const result = await withSpan("ingest.extract", { attributes: { "coursemesh.ingest.job_id": job.id, "coursemesh.ingest.documents": documents.length } }, () =>
        options.pool.run(
          { documents },
          {
            signal,
            onProgress: (step, done, total) => {
              const { progress: value, message } = percent(step, done, total);
              progress.report(value, message, done === 0 || done === total);
            },
          },
        ),
      );
      progress.report(95, "saving", true);
      await progress.flush();
      signal.throwIfAborted();

      return await withSpan("ingest.save_outline", { attributes: { "coursemesh.ingest.job_id": job.id, "coursemesh.ingest.modules": result.outline.modules.length } }, async () => {
        const current = await lockJob(tx, job.id);
        if (!current || current.generation !== item.generation || current.status !== "PROCESSING" || current.leaseOwner !== workerId) return 0;
        const course = {
          id: Bun.randomUUIDv7(),
          jobId: job.id,
          owner: job.owner,
          title: job.courseTitle,
          pageCount: result.outline.pageCount,
          modules: result.outline.modules,
        };
        await insertCourse(tx, course);
        await setDocumentPages(tx, job.id, result.documentPages);
        const done = await finishJob(tx, job.id, {
          status: "COMPLETED",
          message: `done: ${course.modules.length} modules from ${course.pageCount} pages`,
        });
        await enqueueJobCompleted(tx, done, course, documents.length);
        return course.pageCount;
      });
    } finally {
      progress.stop();
      unsubscribe();
      clearInterval(heartbeat);
      clearTimeout(timeout);
    }
  }

  return {
    async handle(tx, event) {
      const item = parseWorkItem(event.payload);
      const claimed = await claim(item);
      if (claimed.kind === "skip") {
        logger.info({ jobId: item.jobId, why: claimed.why }, "work item skipped");
        return;
      }
      if (claimed.kind === "exhausted") throw new PoisonEventError(claimed.job.error);
      if (claimed.kind === "busy") throw new Error(`job ${item.jobId} is being processed by ${claimed.job.leaseOwner}`);

      const job = claimed.job;
      const controller = new AbortController();
      active.set(job.id, controller);
      const log = logger.child({ jobId: job.id, attempt: job.attempts });
      const stopTimer = attemptSeconds.startTimer();
      const outcome = (name: string) => {
        jobAttempts.inc({ outcome: name });
        stopTimer({ outcome: name });
      };
      log.info("processing job");
      try {
        const pages = await run(tx, job, item, controller);
        pagesProcessed.inc(pages);
        outcome(pages > 0 ? "completed" : "cancelled");
        log.info("job processed");
      } catch (error) {
        const stop = controller.signal.aborted ? (controller.signal.reason as Stop) : undefined;
        if (stop instanceof Stop && stop.kind === "cancelled") {
          outcome("cancelled");
          log.info({ why: stop.message }, "job stopped");
          return;
        }
        if (stop instanceof Stop && stop.kind === "shutdown") {
          outcome("interrupted");
          await requeue(job, "interrupted by a restart; it resumes shortly", true);
          throw stop;
        }
        if (error instanceof PdfError) {
          outcome("failed");
          log.info({ reason: error.reason, error: error.message }, "job failed: unreadable PDF");
          await fail(job, error.reason, error.message);
          return;
        }
        const cause = stop instanceof Stop ? stop.message : error instanceof ExtractFailed ? error.message : describe(error);
        if (job.attempts >= options.maxAttempts) {
          outcome("failed");
          log.error({ err: error }, "job failed after its last attempt");
          await fail(job, "PROCESSING_FAILED", `processing failed ${job.attempts} times; last error: ${cause}`);
          throw new PoisonEventError(cause);
        }
        outcome("retried");
        const delay = options.retryDelaysMs[Math.min(event.deliveryCount - 1, options.retryDelaysMs.length - 1)] ?? 1000;
        log.warn({ err: error, retryInMs: delay }, "job attempt failed; it will be retried");
        await requeue(job, `attempt ${job.attempts} failed (${cause}); retrying in ${Math.ceil(delay / 1000)} s`, false).catch((e) =>
          log.warn({ err: e }, "could not put the job back in the queue; its lease will run out"),
        );
        throw error;
      } finally {
        active.delete(job.id);
      }
    },
    running: () => active.size,
    interruptAll() {
      for (const controller of active.values()) controller.abort(new Stop("shutdown", "the worker is shutting down"));
    },
  };
}
