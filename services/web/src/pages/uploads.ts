/**
 * Uploads: drop course PDFs with a course title, watch the job's progress bar and step message live
 * (WatchJob), cancel or retry, and read the finished outline: modules with summaries and pages.
 */
import { randomUUID } from "node:crypto";
import type * as grpc from "@grpc/grpc-js";
import { bearer, unary } from "@coursemesh/shared/grpc/client.ts";
import { JobStatus, type Job, type WatchJobResponse } from "@coursemesh/proto/coursemesh/ingest/v1/ingest.ts";
import type { Route, RouteContext } from "../app.ts";
import { toWebError, type WebError } from "../errors.ts";
import { csrfField, done, field, formMessage, refused, type FormState } from "../forms.ts";
import { badge, enumName, label, relativeTime } from "../format.ts";
import { html, type Html } from "../html.ts";
import { areaPage } from "../layout.ts";
import { htmlResponse } from "../respond.ts";
import { relayStreams, watchedIds } from "../live.ts";
import type { RouteDeps } from "../routes.ts";
import { csrfMatches } from "../session.ts";
import { streamUpload, UploadRefused } from "../upload.ts";

const FORM = "upload";
const LIVE = new Set([JobStatus.JOB_STATUS_PENDING, JobStatus.JOB_STATUS_PROCESSING]);

function statusOf(job: Job): string {
  return enumName(JobStatus, job.status, "JOB_STATUS_");
}

function outline(job: Job): Html {
  const result = job.result;
  if (!result) return html``;
  return html`<div class="outline" data-outline>
  <h4>Outline of ${result.courseTitle || job.courseTitle} <span class="muted">(${result.pageCount} pages)</span></h4>
  <ol>${result.modules.map(
    (m) => html`<li><strong>${m.title}</strong> <span class="muted">pages ${m.startPage}–${m.endPage}</span>
      <p>${m.summary}</p>
      ${m.keyTerms.length ? html`<p class="muted">Key terms: ${m.keyTerms.join(", ")}</p>` : ""}</li>`,
  )}</ol>
</div>`;
}

/** One job: status, progress bar and step, its error, Cancel or Retry, and the outline once done. */
export function jobCard(job: Job, csrf: string): Html {
  const status = statusOf(job);
  const tone = status === "COMPLETED" ? "ok" : status === "FAILED" ? "bad" : status === "CANCELLED" ? "idle" : "warn";
  const files = job.documents.map((d) => d.filename).join(", ");
  const action = (name: "cancel" | "retry", text: string) =>
    html`<form method="post" action="/uploads/${job.id}/${name}" data-enhance data-action="${name}">${csrfField(csrf)}<button type="submit" class="secondary">${text}</button></form>`;
  return html`<article id="job-${job.id}" class="job" data-job="${job.id}" data-status="${status}"${LIVE.has(job.status) ? html` data-watch="jobs"` : ""}>
  <h3>${job.courseTitle} ${badge(label(status), tone)}</h3>
  <p class="muted">${files || "—"} · uploaded ${relativeTime(job.createdAt)}${job.attempts > 1 ? ` · attempt ${job.attempts}` : ""}</p>
  <label for="progress-${job.id}">Progress <span data-progress-text>${job.progress}%</span></label>
  <progress id="progress-${job.id}" max="100" value="${job.progress}" data-progress>${job.progress}%</progress>
  <p data-step aria-live="polite">${job.message}</p>
  ${job.error ? html`<p class="error" role="alert">${job.error}</p>` : ""}
  <div class="actions">
    ${status === "PENDING" || status === "PROCESSING" ? action("cancel", "Cancel") : ""}
    ${status === "FAILED" ? action("retry", "Retry") : ""}
  </div>
  ${status === "COMPLETED" ? outline(job) : ""}
</article>`;
}

function uploadsPage(ctx: RouteContext, jobs: Job[], state?: FormState, loadError?: string): Html {
  return areaPage(ctx, "uploads", "Uploads", html`<h1>Course PDFs</h1>
<section class="card" aria-labelledby="upload-title">
  <h2 id="upload-title">Upload course PDFs</h2>
  <form method="post" action="/uploads" enctype="multipart/form-data" data-upload novalidate>
    ${csrfField(ctx.csrf)}
    <input type="hidden" name="idempotency_key" value="${randomUUID()}">
    <div class="grid">
      ${field({ form: FORM, name: "course_title", label: "Course title", required: true, state, help: "e.g. CMPUT 201: Practical Programming Methodology" })}
      <div class="field wide">
        <label for="upload-files">PDF files</label>
        <div class="dropzone" data-dropzone>
          <input id="upload-files" name="files" type="file" accept="application/pdf,.pdf" multiple required aria-describedby="upload-files-help upload-files-error">
          <p id="upload-files-help" class="help">Choose files or drop them here. One upload makes one course outline.</p>
        </div>
        <p id="upload-files-error" class="error" data-error-for="files">${state?.error?.fields.files ?? ""}</p>
      </div>
    </div>
    ${formMessage(state)}
    <button type="submit">Upload</button>
  </form>
</section>
<section class="card" aria-labelledby="jobs-title">
  <h2 id="jobs-title">Your uploads</h2>
  <p class="muted" aria-live="polite" data-live-status>${loadError ?? ""}</p>
  <div id="job-list">${jobs.map((job) => jobCard(job, ctx.csrf))}</div>
  <p class="muted" data-empty${jobs.length ? html` hidden` : ""}>No uploads yet.</p>
</section>`);
}

/** The uploads area's routes. */
export function uploadRoutes(deps: RouteDeps): Route[] {
  const ingest = deps.backends.ingest;

  async function rerender(ctx: RouteContext, state?: FormState): Promise<Html> {
    try {
      const response = await unary(ingest.listJobs.bind(ingest), { pageSize: 20, pageToken: "", status: JobStatus.JOB_STATUS_UNSPECIFIED }, { token: ctx.token });
      return uploadsPage(ctx, response.jobs, state);
    } catch (error) {
      return uploadsPage(ctx, [], state, toWebError(error).message);
    }
  }

  async function act(ctx: RouteContext, action: "cancel" | "retry"): Promise<Response> {
    try {
      const method = action === "cancel" ? ingest.cancelJob.bind(ingest) : ingest.retryJob.bind(ingest);
      const { job } = await unary(method, { id: ctx.params.id! }, { token: ctx.token });
      return done(ctx, "/uploads", { id: job!.id, html: jobCard(job!, ctx.csrf).value });
    } catch (error) {
      return refused(ctx, toWebError(error), (state) => rerender(ctx, state));
    }
  }

  return [
    { method: "GET", path: "/uploads", handler: async (ctx) => htmlResponse(await rerender(ctx)) },
    {
      method: "POST",
      path: "/uploads",
      // The body is a stream of PDFs; streamUpload checks the CSRF field before the first file.
      streamedBody: true,
      async handler(ctx) {
        try {
          const response = await streamUpload(ctx.request, {
            maxBytes: deps.maxUploadBytes,
            csrfValid: (value) => csrfMatches(deps.sessionSecret, ctx.token, ctx.request.headers.get("x-csrf-token") ?? value),
            open: (callback) => ingest.uploadDocument(bearer(ctx.token), callback),
          });
          return done(ctx, "/uploads", { id: response.job!.id, html: jobCard(response.job!, ctx.csrf).value });
        } catch (error) {
          const failure: WebError =
            error instanceof UploadRefused
              ? { status: error.status, message: error.message, fields: error.field ? { [error.field]: error.message } : {} }
              : toWebError(error, { NO_FILES: "files", NOT_A_PDF: "files", FILE_TOO_LARGE: "files", TOO_MANY_FILES: "files", COURSE_TITLE_REQUIRED: "course_title" });
          // The rest of a refused body is not read; the browser gets its answer at once.
          return refused(ctx, failure, (state) => rerender(ctx, state));
        }
      },
    },
    { method: "POST", path: "/uploads/:id/cancel", handler: (ctx) => act(ctx, "cancel") },
    { method: "POST", path: "/uploads/:id/retry", handler: (ctx) => act(ctx, "retry") },
    {
      method: "GET",
      path: "/live/jobs",
      handler(ctx) {
        return deps.live.open(ctx.principal.subject, (sink) => {
          const calls: grpc.ClientReadableStream<WatchJobResponse>[] = watchedIds(ctx.url).map((id) => ingest.watchJob({ id }, bearer(ctx.token)));
          // WatchJob ends when its job is finished; when all have, the browser stops listening.
          return relayStreams(
            sink,
            calls,
            ({ job }) => {
              if (job) sink.send("job", { id: job.id, status: statusOf(job), progress: job.progress, message: job.message, html: jobCard(job, ctx.csrf).value });
            },
            { endIsFinal: true },
          );
        });
      },
    },
  ];
}
