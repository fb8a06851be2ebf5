/**
 * HTTP for curl users, on the ingest HTTP port: `POST /v1/uploads` (multipart `files`,
 * `course_title`, optional `idempotency_key` field or `Idempotency-Key` header) →
 * `{job_id, status, status_url}`; `GET /v1/jobs/{id}` and `GET /v1/courses/{id}` → proto3 JSON.
 * Bearer tokens as for gRPC; errors carry the gRPC code and ErrorInfo reason in JSON.
 */
import Busboy from "@fastify/busboy";
import { CourseOutline, Job } from "@coursemesh/proto/coursemesh/ingest/v1/ingest";
import { authorize, type Authenticator, type Principal } from "@coursemesh/shared/auth.ts";
import type { Sql } from "@coursemesh/shared/db.ts";
import { GrpcStatus, httpStatusOf, invalidArgument, toServiceError } from "@coursemesh/shared/grpc/errors.ts";
import type { Logger } from "@coursemesh/shared/logger.ts";
import { feedMultipart } from "@coursemesh/shared/multipart.ts";
import { SpanKind, withSpan } from "@coursemesh/shared/telemetry.ts";
import type { DocumentStore } from "./document-store.ts";
import { toProtoJob, toProtoOutline } from "./grpc.ts";
import { getVisibleCourse, getVisibleJob, requireId } from "./jobs.ts";
import { uploadBytes, uploadsAccepted } from "./metrics.ts";
import { acceptUpload, assertQueueHasRoom, fileTooLarge, UploadReceiver, type UploadLimits } from "./upload.ts";

export interface IngestHttpDeps {
  sql: Sql;
  documents: DocumentStore;
  authenticator: Authenticator;
  limits: UploadLimits;
  logger: Logger;
}

/** Room for multipart boundaries and form fields on top of the files themselves. */
export const MULTIPART_OVERHEAD_BYTES = 1024 * 1024;

function errorResponse(error: unknown, logger: Logger): Response {
  const mapped = toServiceError(error);
  if (mapped.reason === "INTERNAL") logger.error({ err: error }, "HTTP request failed");
  const headers: Record<string, string> = { connection: "close" };
  if (mapped.details.retryDelayMs !== undefined) headers["retry-after"] = String(Math.max(1, Math.ceil(mapped.details.retryDelayMs / 1000)));
  return Response.json(
    {
      error: {
        code: GrpcStatus[mapped.grpcCode],
        reason: mapped.reason,
        message: mapped.message,
        ...(mapped.details.fieldViolations?.length ? { field_violations: mapped.details.fieldViolations } : {}),
        ...(mapped.details.metadata ? { metadata: mapped.details.metadata } : {}),
      },
    },
    { status: httpStatusOf(mapped.grpcCode, mapped.reason), headers },
  );
}

/**
 * Streams a multipart body into the receiver and stops reading at the first broken rule (so an
 * oversized upload is refused without reading the rest). Returns the form's text fields.
 */
async function receiveMultipart(request: Request, receiver: UploadReceiver): Promise<Record<string, string>> {
  const contentType = request.headers.get("content-type") ?? "";
  if (!/^multipart\/form-data/i.test(contentType) || !request.body) {
    throw invalidArgument("NO_FILES", 'send multipart/form-data: -F "files=@notes.pdf" -F "course_title=…"', {
      fieldViolations: [{ field: "files", description: "multipart/form-data with at least one PDF in `files`" }],
    });
  }
  const fields: Record<string, string> = {};
  let failure: unknown;
  const busboy = Busboy({ headers: { "content-type": contentType }, limits: { fieldSize: 64 * 1024, fields: 20, headerPairs: 100 } });
  busboy.on("field", (name, value) => {
    fields[name] = value;
  });
  busboy.on("file", (field, stream, filename, _encoding, mimeType) => {
    if (failure || (field !== "files" && field !== "file")) {
      stream.resume();
      return;
    }
    try {
      receiver.startFile(filename, mimeType);
    } catch (error) {
      failure ??= error;
    }
    stream.on("data", (chunk: Buffer) => {
      if (failure) return;
      try {
        receiver.data(chunk);
      } catch (error) {
        failure = error;
      }
    });
  });
  try {
    await feedMultipart(request.body, busboy, () => failure !== undefined);
    if (failure) throw failure;
  } catch (error) {
    if (error instanceof Error && "grpcCode" in error) throw error;
    throw invalidArgument("NO_FILES", `the multipart body could not be read: ${error instanceof Error ? error.message : String(error)}`);
  }
  return fields;
}

/** Routes `/v1/…` requests; everything else falls through to the ops server's 404. */
export function ingestHttpHandler(deps: IngestHttpDeps): (request: Request) => Promise<Response | undefined> {
  const { sql, logger } = deps;

  async function principalOf(request: Request, route: string): Promise<Principal | null> {
    const principal = await deps.authenticator.authenticate(request.headers.get("authorization") ?? undefined);
    authorize("authenticated", principal, route);
    return principal;
  }

  async function upload(request: Request): Promise<Response> {
    const principal = await principalOf(request, "POST /v1/uploads");
    const declared = Number(request.headers.get("content-length") ?? NaN);
    // A body declared larger than the limit is refused before any of it is read.
    if (Number.isFinite(declared) && declared > deps.limits.maxBytes + MULTIPART_OVERHEAD_BYTES) throw fileTooLarge(deps.limits.maxBytes);
    await assertQueueHasRoom(sql, deps.limits.maxQueued);
    const receiver = new UploadReceiver(deps.limits);
    const fields = await receiveMultipart(request, receiver);
    receiver.header(fields.course_title ?? "", fields.idempotency_key ?? request.headers.get("idempotency-key") ?? "");
    const received = receiver.finish();
    const job = await acceptUpload(deps, principal!.subject, received);
    uploadsAccepted.inc({ transport: "http" });
    uploadBytes.inc(received.files.reduce((sum, f) => sum + f.size, 0));
    const statusUrl = new URL(`/v1/jobs/${job.id}`, request.url).toString();
    return Response.json(
      { job_id: job.id, status: (Job.toJSON(toProtoJob(job)) as { status?: string }).status ?? "JOB_STATUS_PENDING", status_url: statusUrl },
      { status: 202, headers: { location: statusUrl } },
    );
  }

  return async (request) => {
    const { pathname } = new URL(request.url);
    const route =
      request.method === "POST" && pathname === "/v1/uploads"
        ? "upload"
        : request.method === "GET" && pathname.startsWith("/v1/jobs/")
          ? "job"
          : request.method === "GET" && pathname.startsWith("/v1/courses/")
            ? "course"
            : undefined;
    if (!route) return undefined;
    return withSpan(`ingest.http.${route}`, { kind: SpanKind.SERVER, attributes: { "http.request.method": request.method, "url.path": pathname } }, async () => {
      try {
        if (route === "upload") return await upload(request);
        const principal = await principalOf(request, `GET ${pathname}`);
        const id = requireId(decodeURIComponent(pathname.split("/")[3] ?? ""), route === "job" ? "id" : "course_id");
        if (route === "job") return Response.json(Job.toJSON(toProtoJob(await getVisibleJob(sql, principal, id))));
        return Response.json(CourseOutline.toJSON(toProtoOutline(await getVisibleCourse(sql, principal, id))));
      } catch (error) {
        return errorResponse(error, logger);
      }
    });
  };
}

