/**
 * Jobs as their owners see them: reading (only your own, operators see all), watching progress
 * from any replica, cancelling and retrying.
 */
import { hasRole, type Principal } from "@coursemesh/shared/auth.ts";
import { transaction, type Sql } from "@coursemesh/shared/db.ts";
import { failedPrecondition, invalidArgument, notFound, unavailable } from "@coursemesh/shared/grpc/errors.ts";
import type { JobChanges } from "./job-changes.ts";
import { enqueueWork } from "./job-events.ts";
import { assertQueueHasRoom } from "./upload.ts";
import {
  finishJob,
  getCourse,
  getJobDetail,
  listJobs,
  lockJob,
  requeueJob,
  type CourseRow,
  type JobDetail,
  type JobRow,
  type JobStatusName,
} from "./store.ts";

const TERMINAL: readonly JobStatusName[] = ["COMPLETED", "FAILED", "CANCELLED"];

/** Whether the job has reached COMPLETED, FAILED or CANCELLED. */
export function isTerminal(status: JobStatusName): boolean {
  return TERMINAL.includes(status);
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Checks an id field; INVALID_ARGUMENT INVALID_ID when it is empty or not a UUID. */
export function requireId(value: string, field: string): string {
  const id = value.trim();
  if (!UUID.test(id)) {
    throw invalidArgument("INVALID_ID", id ? `${field} "${id.slice(0, 64)}" is not a valid id` : `${field} is required`, {
      fieldViolations: [{ field, description: "must be a UUID, as returned by UploadDocument" }],
    });
  }
  return id.toLowerCase();
}

function visibleTo(principal: Principal | null, owner: string): boolean {
  return Boolean(principal && (principal.subject === owner || hasRole(principal, "operator")));
}

const jobNotFound = (id: string) => notFound("JOB_NOT_FOUND", `no job ${id} (it does not exist or belongs to someone else)`, { metadata: { job_id: id } });

/** A job the caller may see; NOT_FOUND otherwise (without saying whether it exists). */
export async function getVisibleJob(sql: Sql, principal: Principal | null, id: string): Promise<JobDetail> {
  const job = await getJobDetail(sql, id);
  if (!job || !visibleTo(principal, job.owner)) throw jobNotFound(id);
  return job;
}

/** A course outline the caller may see. */
export async function getVisibleCourse(sql: Sql, principal: Principal | null, courseId: string): Promise<CourseRow> {
  const course = await getCourse(sql, courseId);
  if (!course || !visibleTo(principal, course.owner)) {
    throw notFound("COURSE_NOT_FOUND", `no course outline ${courseId} (it does not exist or belongs to someone else)`, {
      metadata: { course_id: courseId },
    });
  }
  return course;
}

/** One page of the caller's jobs (all jobs for operators), newest first. */
export async function listVisibleJobs(
  sql: Sql,
  principal: Principal | null,
  query: { status?: JobStatusName; beforeId?: string; limit: number },
): Promise<JobDetail[]> {
  const owner = hasRole(principal, "operator") ? undefined : principal?.subject ?? "";
  return listJobs(sql, { owner, status: query.status, beforeId: query.beforeId, limit: query.limit });
}

/** Cancels a PENDING or PROCESSING job; a worker on it stops when it hears of the change. */
export async function cancelJob(sql: Sql, principal: Principal | null, id: string): Promise<JobDetail> {
  await transaction(sql, "ingest.cancel_job", async (tx) => {
    const job = await lockJob(tx, id);
    if (!job || !visibleTo(principal, job.owner)) throw jobNotFound(id);
    if (isTerminal(job.status)) {
      throw failedPrecondition("JOB_NOT_CANCELLABLE", `job ${id} is already ${job.status}; only PENDING or PROCESSING jobs can be cancelled`, {
        metadata: { job_id: id, status: job.status },
      });
    }
    await finishJob(tx, id, { status: "CANCELLED", message: `cancelled by ${principal?.subject ?? "someone"}` });
  });
  return (await getJobDetail(sql, id))!;
}

/** Queues a FAILED job again, with its attempts starting over. */
export async function retryJob(sql: Sql, principal: Principal | null, id: string, maxQueued: number): Promise<JobDetail> {
  await transaction(sql, "ingest.retry_job", async (tx) => {
    const job = await lockJob(tx, id);
    if (!job || !visibleTo(principal, job.owner)) throw jobNotFound(id);
    if (job.status !== "FAILED") {
      throw failedPrecondition("JOB_NOT_RETRYABLE", `job ${id} is ${job.status}; only FAILED jobs can be retried`, {
        metadata: { job_id: id, status: job.status },
      });
    }
    await assertQueueHasRoom(sql, maxQueued);
    const queued = await requeueJob(tx, id, { message: "queued again", newGeneration: true, resetAttempts: true });
    await enqueueWork(tx, queued);
  });
  return (await getJobDetail(sql, id))!;
}

export interface WatchOptions {
  signal: AbortSignal;
  /** A safety net for a missed notification (e.g. during a reconnect). */
  pollIntervalMs?: number;
  /** Aborted when this replica shuts down: the stream ends with UNAVAILABLE so the client watches again elsewhere. */
  shutdownSignal?: AbortSignal;
}

function changed(a: JobRow, b: JobRow): boolean {
  return a.version !== b.version || a.status !== b.status || a.progress !== b.progress || a.message !== b.message;
}

/** The job's current state, then each change until it is terminal; progress never goes backwards. */
export async function* watchJob(sql: Sql, changes: JobChanges, principal: Principal | null, id: string, options: WatchOptions): AsyncGenerator<JobDetail> {
  let wake: (() => void) | undefined;
  let pending = false;
  // Subscribed before the first read, so a change between the read and the wait is not lost.
  const unsubscribe = changes.subscribe(id, () => {
    pending = true;
    wake?.();
  });
  const onAbort = () => wake?.();
  options.signal.addEventListener("abort", onAbort);
  options.shutdownSignal?.addEventListener("abort", onAbort);
  try {
    let last = await getVisibleJob(sql, principal, id);
    yield last;
    while (!isTerminal(last.status)) {
      if (!pending) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, options.pollIntervalMs ?? 5000);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wake = undefined;
      }
      pending = false;
      if (options.signal.aborted) return;
      if (options.shutdownSignal?.aborted) {
        throw unavailable("DEPENDENCY_UNAVAILABLE", "this replica is shutting down; call WatchJob again to keep following the job", { retryDelayMs: 500 });
      }
      const next = await getJobDetail(sql, id);
      if (!next) throw jobNotFound(id);
      if (!changed(last, next)) continue;
      // Progress is monotonic in the database; this guards readers against an out-of-order read.
      if (next.progress < last.progress) next.progress = last.progress;
      last = next;
      yield next;
    }
  } finally {
    unsubscribe();
    options.signal.removeEventListener("abort", onAbort);
    options.shutdownSignal?.removeEventListener("abort", onAbort);
  }
}
