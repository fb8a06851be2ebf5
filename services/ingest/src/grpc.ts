/**
 * coursemesh.ingest.v1.IngestService: thin handlers that turn protos into domain calls and back.
 */
import {
  IngestServiceService,
  JobStatus,
  jobStatusFromJSON,
  jobStatusToJSON,
  type CourseOutline,
  type IngestServiceServer,
  type Job,
  type UploadDocumentRequest,
} from "@coursemesh/proto/coursemesh/ingest/v1/ingest";
import type { Sql } from "@coursemesh/shared/db.ts";
import { invalidArgument } from "@coursemesh/shared/grpc/errors.ts";
import { defineService, type ServiceRegistration } from "@coursemesh/shared/grpc/server.ts";
import type { DocumentStore } from "./document-store.ts";
import type { JobChanges } from "./job-changes.ts";
import { cancelJob, getVisibleCourse, getVisibleJob, listVisibleJobs, requireId, retryJob, watchJob } from "./jobs.ts";
import type { CourseRow, JobDetail, JobStatusName } from "./store.ts";
import { uploadBytes, uploadsAccepted } from "./metrics.ts";
import { acceptUpload, assertQueueHasRoom, UploadReceiver, type UploadLimits } from "./upload.ts";

export interface IngestApiDeps {
  sql: Sql;
  documents: DocumentStore;
  changes: JobChanges;
  limits: UploadLimits;
  /** Aborted when the replica starts shutting down (ends WatchJob streams with UNAVAILABLE). */
  shutdownSignal: AbortSignal;
}

/** The proto of a course outline. */
export function toProtoOutline(course: CourseRow): CourseOutline {
  return {
    courseId: course.id,
    courseTitle: course.title,
    jobId: course.jobId,
    pageCount: course.pageCount,
    createdAt: course.createdAt,
    modules: course.modules.map((m) => ({ title: m.title, summary: m.summary, keyTerms: m.keyTerms, startPage: m.startPage, endPage: m.endPage })),
  };
}

/** The proto of a job (with its outline once COMPLETED and loaded). */
export function toProtoJob(job: JobDetail): Job {
  return {
    id: job.id,
    status: jobStatusFromJSON(`JOB_STATUS_${job.status}`),
    progress: job.progress,
    message: job.message,
    error: job.error,
    errorReason: job.errorReason,
    attempts: job.attempts,
    createdAt: job.createdAt,
    startedAt: job.startedAt ?? undefined,
    completedAt: job.completedAt ?? undefined,
    updatedAt: job.updatedAt,
    result: job.course ? toProtoOutline(job.course) : undefined,
    courseTitle: job.courseTitle,
    idempotencyKey: job.idempotencyKey,
    owner: job.owner,
    documents: job.documents.map((d) => ({
      filename: d.filename,
      contentType: d.contentType,
      sizeBytes: d.sizeBytes,
      sha256: d.sha256,
      ...(d.pageCount === null ? {} : { pageCount: d.pageCount }),
    })),
  };
}

const DEFAULT_PAGE_SIZE = 50;
const MAX_PAGE_SIZE = 1000;

interface PageToken {
  /** Last job id of the previous page. */
  after: string;
  status: string;
}

function encodePageToken(token: PageToken): string {
  return Buffer.from(JSON.stringify(token)).toString("base64url");
}

function decodePageToken(raw: string, status: string): PageToken | undefined {
  if (!raw) return undefined;
  let token: Partial<PageToken> | undefined;
  try {
    token = JSON.parse(Buffer.from(raw, "base64url").toString("utf8")) as Partial<PageToken>;
  } catch {
    token = undefined;
  }
  if (!token || typeof token.after !== "string" || token.status !== status) {
    throw invalidArgument("INVALID_PAGE_TOKEN", "page_token is not one ListJobs returned for this query; start again without it", {
      fieldViolations: [{ field: "page_token", description: "use next_page_token from the previous page of the same query" }],
    });
  }
  requireId(token.after, "page_token");
  return token as PageToken;
}

function statusFilter(status: JobStatus): JobStatusName | undefined {
  if (status === JobStatus.JOB_STATUS_UNSPECIFIED) return undefined;
  const name = jobStatusToJSON(status);
  if (name === "UNRECOGNIZED") {
    throw invalidArgument("INVALID_ID", `status ${status} is not a JobStatus`, { fieldViolations: [{ field: "status", description: "a JobStatus value" }] });
  }
  return name.replace("JOB_STATUS_", "") as JobStatusName;
}

/** Feeds the client stream into the receiver; the job header must come first. */
async function receiveStream(requests: AsyncIterable<UploadDocumentRequest>, receiver: UploadReceiver, onHeader: () => Promise<void>) {
  for await (const request of requests) {
    const chunk = request.chunk;
    if (!chunk) continue;
    if (!receiver.hasHeader && chunk.$case !== "job") {
      throw invalidArgument("UPLOAD_OUT_OF_ORDER", "the first message of UploadDocument must be `job` (course_title, idempotency_key)");
    }
    if (chunk.$case === "job") {
      if (receiver.hasHeader) throw invalidArgument("UPLOAD_OUT_OF_ORDER", "`job` may only be sent once, as the first message");
      receiver.header(chunk.value.courseTitle, chunk.value.idempotencyKey);
      await onHeader();
    } else if (chunk.$case === "file") {
      receiver.startFile(chunk.value.filename, chunk.value.contentType);
    } else {
      receiver.data(chunk.value);
    }
  }
}

/** The IngestService registration: handlers plus who may call what (jobs belong to their creator). */
export function ingestService(deps: IngestApiDeps): ServiceRegistration {
  const { sql, changes } = deps;
  return defineService<IngestServiceServer>(
    IngestServiceService,
    {
      async uploadDocument(requests, ctx) {
        const receiver = new UploadReceiver(deps.limits);
        // A full queue is refused before the bytes are read.
        await receiveStream(requests, receiver, () => assertQueueHasRoom(sql, deps.limits.maxQueued));
        const upload = receiver.finish();
        ctx.span.setAttribute("coursemesh.ingest.files", upload.files.length);
        const job = await acceptUpload(deps, ctx.principal!.subject, upload);
        ctx.span.setAttribute("coursemesh.ingest.job_id", job.id);
        uploadsAccepted.inc({ transport: "grpc" });
        uploadBytes.inc(upload.files.reduce((sum, f) => sum + f.size, 0));
        return { job: toProtoJob(job) };
      },
      async getJob(request, ctx) {
        return { job: toProtoJob(await getVisibleJob(sql, ctx.principal, requireId(request.id, "id"))) };
      },
      async *watchJob(request, ctx) {
        const id = requireId(request.id, "id");
        for await (const job of watchJob(sql, changes, ctx.principal, id, { signal: ctx.signal, shutdownSignal: deps.shutdownSignal })) {
          yield { job: toProtoJob(job) };
        }
      },
      async listJobs(request, ctx) {
        const status = statusFilter(request.status);
        const statusKey = status ?? "";
        const token = decodePageToken(request.pageToken, statusKey);
        const size = request.pageSize <= 0 ? DEFAULT_PAGE_SIZE : Math.min(request.pageSize, MAX_PAGE_SIZE);
        const jobs = await listVisibleJobs(sql, ctx.principal, { status, beforeId: token?.after, limit: size + 1 });
        const page = jobs.slice(0, size);
        const last = page[page.length - 1];
        return {
          jobs: page.map(toProtoJob),
          nextPageToken: jobs.length > size && last ? encodePageToken({ after: last.id, status: statusKey }) : "",
        };
      },
      async cancelJob(request, ctx) {
        return { job: toProtoJob(await cancelJob(sql, ctx.principal, requireId(request.id, "id"))) };
      },
      async retryJob(request, ctx) {
        return { job: toProtoJob(await retryJob(sql, ctx.principal, requireId(request.id, "id"), deps.limits.maxQueued)) };
      },
      async getCourseOutline(request, ctx) {
        return { outline: toProtoOutline(await getVisibleCourse(sql, ctx.principal, requireId(request.courseId, "course_id"))) };
      },
    },
    {
      uploadDocument: "authenticated",
      getJob: "authenticated",
      watchJob: "authenticated",
      listJobs: "authenticated",
      cancelJob: "authenticated",
      retryJob: "authenticated",
      getCourseOutline: "authenticated",
    },
  );
}
