/**
 * The ingest service as its users see it, over gRPC and HTTP, with real Postgres, NATS JetStream
 * (streams and the object store) and real PDFs: uploads answer at once, jobs progress in the
 * background to an outline, events go out, bad input is refused without leaving anything behind,
 * jobs belong to their creator.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Objm } from "@nats-io/obj";
import postgres from "postgres";
import { CourseOutline, Job, JobStatus, type IngestServiceClient } from "@coursemesh/proto/coursemesh/ingest/v1/ingest";
import type { ServiceProcess } from "@coursemesh/shared/testing/harness.ts";
import { documentsBucket } from "../src/document-store.ts";
import {
  call,
  callError,
  createWorld,
  eventually,
  getJob,
  ingestClient,
  streamMessages,
  tokenFor,
  upload,
  uploadForm,
  waitForJob,
  watchJob,
  type IngestWorld,
} from "./helpers.ts";
import { coursePdf, corruptPdf, encryptedPdf, longCoursePdf, REAL_WORLD_PDF, SAMPLE_CHAPTERS } from "./pdfs.ts";

let world: IngestWorld;
let service: ServiceProcess;
let client: IngestServiceClient;
let alice: string;
let bob: string;
let operator: string;
let db: postgres.Sql;

beforeAll(async () => {
  world = await createWorld();
  service = await world.start({ LOG_LEVEL: "info" });
  client = ingestClient(service.grpcAddress);
  [alice, bob, operator] = await Promise.all([tokenFor("alice"), tokenFor("bob", ["student"]), tokenFor("olga", ["operator"])]);
  db = postgres(world.db.url, { max: 2, onnotice: () => {} });
}, 60_000);

afterAll(async () => {
  client?.close();
  await db?.end();
  await world?.cleanup();
}, 30_000);

const statusName = (job: Job | undefined) => (job ? JobStatus[job.status] : "none");

describe("upload, background processing, outline", () => {
  test("an upload answers PENDING at once; WatchJob shows monotonic progress through the steps to the outline", async () => {
    const { bytes } = await coursePdf({ bookmarks: true });
    const answer = await upload(client, { token: alice, courseTitle: "CMPUT 201: Practical Programming Methodology", files: [{ filename: "notes.pdf", bytes }] });
    expect(answer.error).toBeUndefined();
    const job = answer.job!;
    expect(statusName(job)).toBe("JOB_STATUS_PENDING");
    expect(job.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7/);
    expect(job.owner).toBe("alice");
    expect(job.courseTitle).toBe("CMPUT 201: Practical Programming Methodology");
    expect(job.documents).toEqual([
      { filename: "notes.pdf", contentType: "application/pdf", sizeBytes: bytes.length, sha256: new Bun.CryptoHasher("sha256").update(bytes).digest("hex") },
    ]);

    const { jobs, error } = await watchJob(client, job.id, alice);
    expect(error).toBeUndefined();
    expect(jobs.length).toBeGreaterThanOrEqual(2);
    expect(jobs[0]!.id).toBe(job.id);
    for (let i = 1; i < jobs.length; i++) expect(jobs[i]!.progress).toBeGreaterThanOrEqual(jobs[i - 1]!.progress);
    const last = jobs.at(-1)!;
    expect(statusName(last)).toBe("JOB_STATUS_COMPLETED");
    expect(last.progress).toBe(100);
    expect(last.attempts).toBe(1);
    expect(last.startedAt).toBeInstanceOf(Date);
    expect(last.completedAt!.getTime()).toBeGreaterThanOrEqual(last.startedAt!.getTime());
    expect(last.documents[0]!.pageCount).toBe(8);
    const messages = jobs.map((j) => j.message);
    expect(messages.some((m) => /^extracting text \d+\/8 pages$/.test(m))).toBe(true);

    const outline = last.result!;
    expect(outline.courseTitle).toBe("CMPUT 201: Practical Programming Methodology");
    expect(outline.pageCount).toBe(8);
    expect(outline.modules.map((m) => m.title)).toEqual(SAMPLE_CHAPTERS.map((c, i) => `${i + 1}. ${c.title}`));
    const fetched = await call<{ courseId: string }, { outline: CourseOutline }>(client, "getCourseOutline", { courseId: outline.courseId }, alice);
    expect(fetched.outline.modules).toEqual(outline.modules);
    expect(fetched.outline.jobId).toBe(job.id);

    // The others hear about it on the INGEST stream, in proto3 JSON.
    const events = await eventually(async () => {
      const all = (await streamMessages(world, "INGEST")).filter((e) => e.body.jobId === job.id);
      return all.length === 2 ? all : undefined;
    });
    const completed = events.find((e) => e.subject === `ingest.job.completed.${job.id}`)!;
    expect(completed.headers["Coursemesh-Event"]).toBe("coursemesh.events.v1.IngestJobCompleted");
    expect(completed.headers["Nats-Msg-Id"]).toBe(completed.body.eventId as string);
    expect(completed.body).toMatchObject({ courseId: outline.courseId, courseTitle: outline.courseTitle, moduleCount: 4, pageCount: 8, documentCount: 1, attempts: 1 });
    expect(completed.body.moduleTitles).toEqual(outline.modules.map((m) => m.title));
    const created = events.find((e) => e.subject === `ingest.course.created.${outline.courseId}`)!;
    expect(created.body).toMatchObject({ courseId: outline.courseId, jobId: job.id, moduleCount: 4, aggregateVersion: 1 });
  });

  test("three uploads at once all answer before processing ends, and the three jobs run in parallel", async () => {
    const pdfs = await Promise.all([longCoursePdf(120), longCoursePdf(120, "bold"), longCoursePdf(120)]);
    const answers = await Promise.all(
      pdfs.map((bytes, i) => upload(client, { token: alice, courseTitle: `Parallel ${i + 1}`, files: [{ filename: `p${i + 1}.pdf`, bytes }] })),
    );
    for (const answer of answers) {
      expect(answer.error).toBeUndefined();
      // Answered as soon as the bytes and the job were durable, not after the work.
      expect(["JOB_STATUS_PENDING", "JOB_STATUS_PROCESSING"]).toContain(statusName(answer.job));
    }
    const done = await Promise.all(answers.map((a) => waitForJob(client, a.job!.id, alice, undefined, 60_000)));
    for (const job of done) expect(statusName(job)).toBe("JOB_STATUS_COMPLETED");
    const lastAnswerAt = Math.max(...done.map((j) => j.createdAt!.getTime()));
    expect(Math.min(...done.map((j) => j.completedAt!.getTime()))).toBeGreaterThan(lastAnswerAt);
    // Every pair of jobs was being processed at the same time (INGEST_CONCURRENCY=3).
    for (const a of done) for (const b of done) expect(a.startedAt!.getTime()).toBeLessThan(b.completedAt!.getTime());
    expect(done.map((j) => j.result!.pageCount)).toEqual([120, 120, 120]);
    expect(done[1]!.result!.modules.length).toBe(6);
  }, 60_000);

  test("the real-world PDF becomes an outline of its chapters", async () => {
    const bytes = new Uint8Array(await Bun.file(REAL_WORLD_PDF).arrayBuffer());
    const answer = await upload(client, { token: alice, courseTitle: "ASN.1 with GNU Libtasn1", files: [{ filename: "libtasn1.pdf", bytes }] });
    const job = await waitForJob(client, answer.job!.id, alice);
    expect(statusName(job)).toBe("JOB_STATUS_COMPLETED");
    expect(job.result!.pageCount).toBe(36);
    expect(job.result!.modules[0]).toMatchObject({ title: "1 Introduction", startPage: 4 });
  });
});

describe("HTTP for curl users", () => {
  test("POST /v1/uploads (multipart) → 202 {job_id, status, status_url}; GET status_url → the job", async () => {
    const { bytes } = await coursePdf({ headings: "large" });
    const response = await fetch(`${service.httpUrl}/v1/uploads`, {
      method: "POST",
      headers: { authorization: `Bearer ${alice}`, "idempotency-key": "http-1" },
      body: uploadForm({ course_title: "MATH 125: Linear Algebra" }, [{ filename: "linear.pdf", bytes }]),
    });
    expect(response.status).toBe(202);
    const body = (await response.json()) as { job_id: string; status: string; status_url: string };
    expect(body.status).toBe("JOB_STATUS_PENDING");
    expect(body.status_url).toBe(`${service.httpUrl}/v1/jobs/${body.job_id}`);
    expect(response.headers.get("location")).toBe(body.status_url);

    await waitForJob(client, body.job_id, alice);
    const status = await fetch(body.status_url, { headers: { authorization: `Bearer ${alice}` } });
    expect(status.status).toBe(200);
    const job = (await status.json()) as { id: string; status: string; progress: number; idempotencyKey: string; result: { courseId: string; modules: unknown[] } };
    expect(job).toMatchObject({ id: body.job_id, status: "JOB_STATUS_COMPLETED", progress: 100, idempotencyKey: "http-1" });
    expect(job.result.modules).toHaveLength(4);
    const course = await fetch(`${service.httpUrl}/v1/courses/${job.result.courseId}`, { headers: { authorization: `Bearer ${alice}` } });
    expect(((await course.json()) as { modules: unknown[] }).modules).toHaveLength(4);

    // The same idempotency key (as a header) answers the same job.
    const again = await fetch(`${service.httpUrl}/v1/uploads`, {
      method: "POST",
      headers: { authorization: `Bearer ${alice}`, "idempotency-key": "http-1" },
      body: uploadForm({ course_title: "MATH 125: Linear Algebra" }, [{ filename: "linear.pdf", bytes }]),
    });
    expect(((await again.json()) as { job_id: string }).job_id).toBe(body.job_id);
  });

  test("no token → 401; someone else's job → 404; not a PDF → 415; too large → 413; no title → 400", async () => {
    const { bytes } = await coursePdf();
    const post = (token: string | undefined, form: FormData) =>
      fetch(`${service.httpUrl}/v1/uploads`, { method: "POST", headers: token ? { authorization: `Bearer ${token}` } : {}, body: form });

    const anonymous = await post(undefined, uploadForm({ course_title: "X" }, [{ filename: "a.pdf", bytes }]));
    expect(anonymous.status).toBe(401);
    expect(((await anonymous.json()) as { error: { reason: string } }).error.reason).toBe("TOKEN_MISSING");

    const notPdf = await post(alice, uploadForm({ course_title: "X" }, [{ filename: "slides.pptx", bytes: new Uint8Array(4096).fill(80), contentType: "application/pdf" }]));
    expect(notPdf.status).toBe(415);
    expect(await notPdf.json()).toMatchObject({ error: { code: "INVALID_ARGUMENT", reason: "NOT_A_PDF" } });

    const huge = new Uint8Array(9 * 1024 * 1024);
    huge.set(Buffer.from("%PDF-1.7\n"));
    const tooLarge = await post(alice, uploadForm({ course_title: "X" }, [{ filename: "huge.pdf", bytes: huge }]));
    expect(tooLarge.status).toBe(413);
    expect(await tooLarge.json()).toMatchObject({ error: { code: "RESOURCE_EXHAUSTED", reason: "FILE_TOO_LARGE" } });

    const untitled = await post(alice, uploadForm({}, [{ filename: "a.pdf", bytes }]));
    expect(untitled.status).toBe(400);
    expect(await untitled.json()).toMatchObject({ error: { reason: "COURSE_TITLE_REQUIRED" } });

    const mine = await post(alice, uploadForm({ course_title: "Mine" }, [{ filename: "a.pdf", bytes }]));
    const { job_id } = (await mine.json()) as { job_id: string };
    const theirs = await fetch(`${service.httpUrl}/v1/jobs/${job_id}`, { headers: { authorization: `Bearer ${bob}` } });
    expect(theirs.status).toBe(404);
    expect(await theirs.json()).toMatchObject({ error: { reason: "JOB_NOT_FOUND" } });
  });

  test("a chunked multipart upload (no Content-Length) is refused with 413 as soon as it crosses the limit", async () => {
    const boundary = "----coursemesh-test";
    const head = Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="course_title"\r\n\r\nStreaming\r\n` +
        `--${boundary}\r\nContent-Disposition: form-data; name="files"; filename="endless.pdf"\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.7\n`,
    );
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (sent === 0) controller.enqueue(head);
        if (sent > 64 * 1024 * 1024) return controller.close();
        await Bun.sleep(2);
        sent += 256 * 1024;
        controller.enqueue(new Uint8Array(256 * 1024));
      },
    });
    const response = await fetch(`${service.httpUrl}/v1/uploads`, {
      method: "POST",
      headers: { authorization: `Bearer ${alice}`, "content-type": `multipart/form-data; boundary=${boundary}` },
      body,
      duplex: "half",
    } as RequestInit);
    expect(response.status).toBe(413);
    expect(await response.json()).toMatchObject({ error: { reason: "FILE_TOO_LARGE" } });
    // Refused at the limit (8 MiB), long before the client would have finished.
    expect(sent).toBeLessThan(32 * 1024 * 1024);
  });

  test("a body declared over the limit is refused before it is read", async () => {
    const started = performance.now();
    const response = await fetch(`${service.httpUrl}/v1/uploads`, {
      method: "POST",
      headers: { authorization: `Bearer ${alice}`, "content-type": "multipart/form-data; boundary=x", "content-length": String(20 * 1024 * 1024) },
      body: new ReadableStream({
        async pull(controller) {
          // A slow client: the answer must not wait for its 20 MiB.
          await Bun.sleep(50);
          controller.enqueue(new Uint8Array(64 * 1024));
        },
      }),
      duplex: "half",
    } as RequestInit);
    expect(response.status).toBe(413);
    expect(performance.now() - started).toBeLessThan(5000);
  });
});

describe("bad input is refused and leaves nothing behind", () => {
  const rowCounts = async () => {
    const [row] = await db`select (select count(*)::int from ingest.jobs) as jobs, (select count(*)::int from ingest.blobs) as blobs`;
    return row as { jobs: number; blobs: number };
  };

  test("over INGEST_MAX_BYTES over gRPC: RESOURCE_EXHAUSTED while the client is still sending", async () => {
    const before = await rowCounts();
    const big = new Uint8Array(12 * 1024 * 1024);
    big.set(Buffer.from("%PDF-1.7\n"));
    const answer = await upload(client, { token: alice, courseTitle: "Too big", files: [{ filename: "big.pdf", bytes: big }], chunkSize: 512 * 1024, chunkDelayMs: 20 });
    expect(answer.error).toMatchObject({ reason: "FILE_TOO_LARGE" });
    expect(answer.error!.code).toBe(8); // RESOURCE_EXHAUSTED
    expect(answer.error!.message).toContain("8 MiB");
    // Refused as the limit was crossed, not after everything arrived.
    expect(answer.bytesSent).toBeLessThan(big.length);
    expect(await rowCounts()).toEqual(before);
  });

  test("not a PDF by content (whatever the name and type say): INVALID_ARGUMENT NOT_A_PDF", async () => {
    const before = await rowCounts();
    const png = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(2048)]);
    const answer = await upload(client, { token: alice, courseTitle: "Pictures", files: [{ filename: "scan.pdf", bytes: png }] });
    expect(answer.error).toMatchObject({ code: 3, reason: "NOT_A_PDF" });
    expect(answer.error!.fieldViolations[0]!.field).toBe("files");
    expect(await rowCounts()).toEqual(before);
    const store = await new Objm(world.nats).open(documentsBucket(world.prefix));
    const sha = new Bun.CryptoHasher("sha256").update(png).digest("hex");
    expect(await store.info(`sha256-${sha}`)).toBeNull();
  });

  test("an out-of-order stream, a missing title and no files are refused with their reasons", async () => {
    const { bytes } = await coursePdf();
    const outOfOrder = await upload(client, { token: alice, courseTitle: "", files: [], raw: [{ chunk: { $case: "data", value: Buffer.from(bytes) } }] });
    expect(outOfOrder.error).toMatchObject({ code: 3, reason: "UPLOAD_OUT_OF_ORDER" });
    const untitled = await upload(client, { token: alice, courseTitle: " ", files: [{ filename: "a.pdf", bytes }] });
    expect(untitled.error).toMatchObject({ code: 3, reason: "COURSE_TITLE_REQUIRED" });
    const empty = await upload(client, { token: alice, courseTitle: "Nothing", files: [] });
    expect(empty.error).toMatchObject({ code: 3, reason: "NO_FILES" });
  });

  test("a corrupt PDF and an encrypted PDF are accepted, then their jobs FAIL with a reason a person understands", async () => {
    const corrupt = await upload(client, { token: alice, courseTitle: "Broken", files: [{ filename: "broken.pdf", bytes: corruptPdf() }] });
    const encrypted = await upload(client, { token: alice, courseTitle: "Locked", files: [{ filename: "locked.pdf", bytes: await encryptedPdf() }] });
    const [broken, locked] = await Promise.all([waitForJob(client, corrupt.job!.id, alice), waitForJob(client, encrypted.job!.id, alice)]);
    expect(statusName(broken)).toBe("JOB_STATUS_FAILED");
    expect(broken.errorReason).toBe("PDF_CORRUPT");
    expect(broken.error).toContain("broken.pdf: the PDF could not be read");
    expect(broken.attempts).toBe(1);
    expect(statusName(locked)).toBe("JOB_STATUS_FAILED");
    expect(locked.errorReason).toBe("PDF_ENCRYPTED");
    expect(locked.error).toContain("password protected");
    expect(locked.result).toBeUndefined();
    const failed = await eventually(async () => {
      const events = (await streamMessages(world, "INGEST")).filter((e) => e.subject === `ingest.job.failed.${locked.id}`);
      return events.length ? events[0] : undefined;
    });
    expect(failed.body).toMatchObject({ jobId: locked.id, errorReason: "PDF_ENCRYPTED", courseTitle: "Locked", attempts: 1 });
  });
});

describe("idempotency, ownership and listing", () => {
  test("the same idempotency key returns the same job; reused for another upload → ALREADY_EXISTS", async () => {
    const { bytes } = await coursePdf({ bookmarks: true });
    const first = await upload(client, { token: alice, courseTitle: "Idempotent", idempotencyKey: "upload-7", files: [{ filename: "a.pdf", bytes }] });
    const repeat = await upload(client, { token: alice, courseTitle: "Idempotent", idempotencyKey: "upload-7", files: [{ filename: "a.pdf", bytes }] });
    expect(repeat.job!.id).toBe(first.job!.id);
    const other = await upload(client, { token: alice, courseTitle: "Something else", idempotencyKey: "upload-7", files: [{ filename: "a.pdf", bytes }] });
    expect(other.error).toMatchObject({ code: 6, reason: "IDEMPOTENCY_KEY_REUSED" });
    // Keys are per owner: bob's "upload-7" is his own job.
    const bobs = await upload(client, { token: bob, courseTitle: "Idempotent", idempotencyKey: "upload-7", files: [{ filename: "a.pdf", bytes }] });
    expect(bobs.job!.id).not.toBe(first.job!.id);
    const [{ n }] = (await db`select count(*)::int as n from ingest.jobs where idempotency_key = 'upload-7'`) as unknown as [{ n: number }];
    expect(n).toBe(2);
  });

  test("jobs belong to their creator: others get NOT_FOUND, operators see all, no token is UNAUTHENTICATED", async () => {
    const { bytes } = await coursePdf();
    const { job } = await upload(client, { token: alice, courseTitle: "Private", files: [{ filename: "a.pdf", bytes }] });
    const id = job!.id;
    expect(await callError(getJob(client, id, bob))).toMatchObject({ code: 5, reason: "JOB_NOT_FOUND" });
    expect(await callError(call(client, "cancelJob", { id }, bob))).toMatchObject({ code: 5, reason: "JOB_NOT_FOUND" });
    expect((await watchJob(client, id, bob)).error).toMatchObject({ code: 5, reason: "JOB_NOT_FOUND" });
    expect((await getJob(client, id, operator)).owner).toBe("alice");
    expect(await callError(call(client, "getJob", { id }))).toMatchObject({ code: 16, reason: "TOKEN_MISSING" });
    const anonymous = await upload(client, { courseTitle: "Anon", files: [{ filename: "a.pdf", bytes }] });
    expect(anonymous.error).toMatchObject({ code: 16, reason: "TOKEN_MISSING" });
    expect(await callError(getJob(client, "not-a-uuid", alice))).toMatchObject({ code: 3, reason: "INVALID_ID" });
    const done = await waitForJob(client, id, alice);
    expect(await callError(call(client, "getCourseOutline", { courseId: done.result!.courseId }, bob))).toMatchObject({ code: 5, reason: "COURSE_NOT_FOUND" });
  });

  test("ListJobs: the caller's jobs newest first, in pages; operators list everyone's", async () => {
    type Page = { jobs: Job[]; nextPageToken: string };
    const seen: Job[] = [];
    let token = "";
    do {
      const page = await call<object, Page>(client, "listJobs", { pageSize: 3, pageToken: token, status: 0 }, alice);
      expect(page.jobs.length).toBeLessThanOrEqual(3);
      seen.push(...page.jobs);
      token = page.nextPageToken;
    } while (token);
    const [{ n }] = (await db`select count(*)::int as n from ingest.jobs where owner = 'alice'`) as unknown as [{ n: number }];
    expect(seen.length).toBe(n);
    expect(new Set(seen.map((j) => j.owner))).toEqual(new Set(["alice"]));
    const ids = seen.map((j) => j.id);
    expect(ids).toEqual([...ids].sort().reverse());

    // Completed jobs carry their outline's course id, title and page count; the modules are left out.
    const completed = seen.find((j) => statusName(j) === "JOB_STATUS_COMPLETED")!;
    expect(completed.result).toMatchObject({ courseTitle: completed.courseTitle, modules: [] });
    expect(completed.result!.courseId).toMatch(/^[0-9a-f-]{36}$/);
    const failed = await call<object, Page>(client, "listJobs", { pageSize: 100, pageToken: "", status: JobStatus.JOB_STATUS_FAILED }, alice);
    expect(failed.jobs.length).toBeGreaterThanOrEqual(2);
    for (const job of failed.jobs) expect(statusName(job)).toBe("JOB_STATUS_FAILED");

    const all = await call<object, Page>(client, "listJobs", { pageSize: 1000, pageToken: "", status: 0 }, operator);
    expect(new Set(all.jobs.map((j) => j.owner))).toEqual(new Set(["alice", "bob"]));
    expect(await callError(call(client, "listJobs", { pageSize: 1, pageToken: "garbage", status: 0 }, alice))).toMatchObject({ reason: "INVALID_PAGE_TOKEN" });
  });
});

describe("metrics", () => {
  test("/metrics shows uploads, attempts by outcome, pages read and the queue", async () => {
    const metrics = await (await fetch(`${service.httpUrl}/metrics`)).text();
    expect(metrics).toMatch(/ingest_uploads_total\{[^}]*transport="grpc"[^}]*\} [1-9]/);
    expect(metrics).toMatch(/ingest_uploads_total\{[^}]*transport="http"[^}]*\} [1-9]/);
    expect(metrics).toMatch(/ingest_job_attempts_total\{[^}]*outcome="completed"[^}]*\} [1-9]/);
    expect(metrics).toMatch(/ingest_job_attempts_total\{[^}]*outcome="failed"[^}]*\} [1-9]/);
    expect(metrics).toMatch(/ingest_pages_processed_total\{[^}]*\} [1-9]\d*/);
    expect(metrics).toMatch(/ingest_jobs_live\{[^}]*status="PENDING"[^}]*\} \d+/);
  });
});

describe("cancel", () => {
  test("CancelJob stops a running job promptly; it stays CANCELLED with no outline", async () => {
    const bytes = await longCoursePdf(400, "bold");
    const { job } = await upload(client, { token: alice, courseTitle: "Long", files: [{ filename: "long.pdf", bytes }] });
    const running = await waitForJob(client, job!.id, alice, (j) => statusName(j) === "JOB_STATUS_PROCESSING" && j.progress > 5);
    const cancelled = (await call<{ id: string }, { job: Job }>(client, "cancelJob", { id: running.id }, alice)).job;
    const cancelledAt = Date.now();
    expect(statusName(cancelled)).toBe("JOB_STATUS_CANCELLED");
    expect(cancelled.message).toBe("cancelled by alice");
    // The worker hears of it through Postgres and stops its thread.
    await eventually(async () => (service.logs.some((l) => l.jobId === running.id && l.msg === "job stopped") ? true : undefined), 5000, "the worker to stop");
    expect(Date.now() - cancelledAt).toBeLessThan(3000);
    await Bun.sleep(500);
    const after = await getJob(client, running.id, alice);
    expect(statusName(after)).toBe("JOB_STATUS_CANCELLED");
    expect(after.result).toBeUndefined();
    expect(await callError(call(client, "cancelJob", { id: running.id }, alice))).toMatchObject({ code: 9, reason: "JOB_NOT_CANCELLABLE" });
    expect(await callError(call(client, "retryJob", { id: running.id }, alice))).toMatchObject({ code: 9, reason: "JOB_NOT_RETRYABLE" });
    const events = (await streamMessages(world, "INGEST")).filter((e) => e.body.jobId === running.id);
    expect(events).toEqual([]);
  }, 30_000);
});
