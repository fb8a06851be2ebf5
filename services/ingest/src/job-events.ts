/**
 * What ingest tells others through its outbox: the work item on `work.ingest` (for ingest's own
 * workers) and the job and course events on INGEST. Each is written inside the transaction of the
 * state change it reports.
 */
import { CourseCreated, IngestJobCompleted, IngestJobFailed } from "@coursemesh/proto/coursemesh/events/v1/events";
import type { Tx } from "@coursemesh/shared/db.ts";
import { enqueue } from "@coursemesh/shared/events/index.ts";
import type { CourseRow, JobRow } from "./store.ts";

/** The body of a `work.ingest` message. */
export interface WorkItem {
  jobId: string;
  /** The job's generation when queued; RetryJob starts a new one, so older items are stale. */
  generation: number;
}

/** The `Coursemesh-Event` type of work items (internal to ingest, plain JSON). */
export const WORK_ITEM_TYPE = "coursemesh.ingest.v1.WorkItem";

/** Queues the job for a worker. */
export async function enqueueWork(tx: Tx, job: JobRow): Promise<void> {
  const item: WorkItem = { jobId: job.id, generation: job.generation };
  await enqueue(tx, {
    subject: "work.ingest",
    type: WORK_ITEM_TYPE,
    payload: { ...item },
    aggregateId: job.id,
    aggregateVersion: job.version,
  });
}

/** `ingest.job.failed.<job_id>`. */
export async function enqueueJobFailed(tx: Tx, job: JobRow): Promise<void> {
  await enqueue(tx, {
    subject: `ingest.job.failed.${job.id}`,
    type: "coursemesh.events.v1.IngestJobFailed",
    aggregateId: job.id,
    aggregateVersion: job.version,
    payload: IngestJobFailed.toJSON(
      IngestJobFailed.fromPartial({
        jobId: job.id,
        aggregateVersion: job.version,
        courseTitle: job.courseTitle,
        error: job.error,
        errorReason: job.errorReason,
        attempts: job.attempts,
      }),
    ) as Record<string, unknown>,
  });
}

/** `ingest.job.completed.<job_id>` and `ingest.course.created.<course_id>`. */
export async function enqueueJobCompleted(tx: Tx, job: JobRow, course: Omit<CourseRow, "createdAt">, documentCount: number): Promise<void> {
  await enqueue(tx, {
    subject: `ingest.job.completed.${job.id}`,
    type: "coursemesh.events.v1.IngestJobCompleted",
    aggregateId: job.id,
    aggregateVersion: job.version,
    payload: IngestJobCompleted.toJSON(
      IngestJobCompleted.fromPartial({
        jobId: job.id,
        aggregateVersion: job.version,
        courseId: course.id,
        courseTitle: course.title,
        moduleCount: course.modules.length,
        moduleTitles: course.modules.map((m) => m.title),
        pageCount: course.pageCount,
        documentCount,
        attempts: job.attempts,
        startedAt: job.startedAt ?? undefined,
      }),
    ) as Record<string, unknown>,
  });
  await enqueue(tx, {
    subject: `ingest.course.created.${course.id}`,
    type: "coursemesh.events.v1.CourseCreated",
    aggregateId: course.id,
    aggregateVersion: 1,
    payload: CourseCreated.toJSON(
      CourseCreated.fromPartial({
        courseId: course.id,
        aggregateVersion: 1,
        courseTitle: course.title,
        jobId: job.id,
        moduleCount: course.modules.length,
        pageCount: course.pageCount,
      }),
    ) as Record<string, unknown>,
  });
}
