/**
 * Surviving restarts and failures with one worker (INGEST_CONCURRENCY=1), so the order of events is
 * under the test's control: a SIGKILL mid-job, a SIGTERM mid-job, a transient failure retried with
 * backoff until the job FAILS and its work item is dead-lettered (then RetryJob), and the queue
 * limit.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { Objm } from "@nats-io/obj";
import postgres from "postgres";
import { JobStatus, type IngestServiceClient, type Job } from "@coursemesh/proto/coursemesh/ingest/v1/ingest";
import type { ServiceProcess } from "@coursemesh/shared/testing/harness.ts";
import { documentsBucket } from "../src/document-store.ts";
import { call, createWorld, eventually, ingestClient, streamMessages, tokenFor, upload, waitForJob, watchJob, type IngestWorld } from "./helpers.ts";
import { coursePdf, longCoursePdf } from "./pdfs.ts";

// SHUTDOWN_TIMEOUT_MS=3000 gives running jobs 1 s to finish on SIGTERM before they are put back in the queue.
const ENV = { INGEST_CONCURRENCY: "1", INGEST_MAX_QUEUED: "3", INGEST_ACK_WAIT_MS: "1500", INGEST_RETRY_BACKOFF_MS: "200", SHUTDOWN_TIMEOUT_MS: "3000" };

let world: IngestWorld;
let service: ServiceProcess;
let client: IngestServiceClient;
let alice: string;
let slowPdf: Uint8Array;

async function restart(): Promise<void> {
  client?.close();
  service = await world.start(ENV);
  client = ingestClient(service.grpcAddress);
}

// A test that failed half-way may leave the service stopped; the next one starts it again.
beforeEach(async () => {
  if (service && service.process.exitCode !== null) await restart();
}, 60_000);

beforeAll(async () => {
  world = await createWorld();
  alice = await tokenFor("alice");
  // Headings in bold only: two passes over 400 pages keep the one worker busy for a few seconds.
  slowPdf = await longCoursePdf(400, "bold");
  await restart();
}, 60_000);

afterAll(async () => {
  client?.close();
  await world?.cleanup();
}, 30_000);

const statusName = (job: Job) => JobStatus[job.status];
const isProcessing = (job: Job) => statusName(job) === "JOB_STATUS_PROCESSING" && job.progress > 5;

describe("restarts lose nothing", () => {
  test("SIGKILL during processing: after a restart the work item comes back, the job completes, never stuck in PROCESSING", async () => {
    const { job } = await upload(client, { token: alice, courseTitle: "Killed midway", files: [{ filename: "long.pdf", bytes: slowPdf }] });
    const running = await waitForJob(client, job!.id, alice, isProcessing);
    await service.kill();
    await restart();
    const done = await waitForJob(client, running.id, alice, undefined, 60_000);
    expect(statusName(done)).toBe("JOB_STATUS_COMPLETED");
    // The killed attempt counts: the job was taken over once its lease ran out.
    expect(done.attempts).toBe(2);
    expect(done.progress).toBe(100);
    expect(done.result!.pageCount).toBe(400);
    const completed = await eventually(async () => {
      const events = (await streamMessages(world, "INGEST")).filter((e) => e.subject === `ingest.job.completed.${done.id}`);
      return events.length ? events : undefined;
    });
    expect(completed).toHaveLength(1);
  }, 90_000);

  test("SIGTERM during processing: exit 0 promptly, the job goes back to the queue without using up an attempt, and completes after the restart", async () => {
    const { job } = await upload(client, { token: alice, courseTitle: "Stopped midway", files: [{ filename: "long.pdf", bytes: slowPdf }] });
    // Early in the text pass: the bold-headings pass alone outlasts the 1 s grace.
    await waitForJob(client, job!.id, alice, isProcessing);
    const watching = watchJob(client, job!.id, alice);
    await Bun.sleep(200);
    const stoppingAt = performance.now();
    expect(await service.stop()).toBe(0);
    expect(performance.now() - stoppingAt).toBeLessThan(9000);
    // A watcher is told to watch again elsewhere rather than left hanging.
    const watched = await watching;
    expect(watched.error).toMatchObject({ code: 14 });
    expect(watched.error!.message).toContain("call WatchJob again");
    // While no process runs: back in the queue, with the attempt given back.
    const db = postgres(world.db.url, { max: 1, onnotice: () => {} });
    const [row] = await db`select status, attempts, message, lease_owner from ingest.jobs where id = ${job!.id}`;
    await db.end();
    expect(row).toEqual({ status: "PENDING", attempts: 0, message: "interrupted by a restart; it resumes shortly", lease_owner: null });
    await restart();
    const done = await waitForJob(client, job!.id, alice, undefined, 60_000);
    expect(statusName(done)).toBe("JOB_STATUS_COMPLETED");
    expect(done.attempts).toBe(1);
  }, 90_000);
});

describe("two replicas", () => {
  test("WatchJob and CancelJob on one replica follow and stop a job running on the other", async () => {
    const other = await world.start(ENV);
    try {
      const { job } = await upload(client, { token: alice, courseTitle: "Across replicas", files: [{ filename: "long.pdf", bytes: slowPdf }] });
      await waitForJob(client, job!.id, alice, isProcessing);
      const runsOn = (p: ServiceProcess) => p.logs.some((l) => l.jobId === job!.id && l.msg === "processing job");
      const runner = await eventually(async () => (runsOn(service) ? service : runsOn(other) ? other : undefined), 5000, "the worker's log line");
      const watcher = ingestClient((runner === service ? other : service).grpcAddress);
      const watching = watchJob(watcher, job!.id, alice);
      await Bun.sleep(700);
      await call(watcher, "cancelJob", { id: job!.id }, alice);
      const { jobs, error } = await watching;
      watcher.close();
      expect(error).toBeUndefined();
      // The first message is the state when the watch began; progress came from the other replica's worker.
      expect(jobs.length).toBeGreaterThanOrEqual(3);
      for (let i = 1; i < jobs.length; i++) expect(jobs[i]!.progress).toBeGreaterThanOrEqual(jobs[i - 1]!.progress);
      expect(statusName(jobs.at(-1)!)).toBe("JOB_STATUS_CANCELLED");
      await eventually(async () => (runner.logs.some((l) => l.jobId === job!.id && l.msg === "job stopped") ? true : undefined), 5000, "the runner to stop");
    } finally {
      await other.stop();
    }
  }, 60_000);
});

describe("failures", () => {
  test("a transient failure is retried with backoff, then the job FAILS and its work item goes to the DLQ; RetryJob completes it", async () => {
    const { bytes } = await coursePdf({ bookmarks: true, titlePage: "Retry me" });
    // Keep the one worker busy while the next job's stored PDF is taken away.
    const blocker = await upload(client, { token: alice, courseTitle: "Blocker", files: [{ filename: "long.pdf", bytes: slowPdf }] });
    await waitForJob(client, blocker.job!.id, alice, isProcessing);
    const { job } = await upload(client, { token: alice, courseTitle: "Lost blob", files: [{ filename: "notes.pdf", bytes }] });
    const store = await new Objm(world.nats).open(documentsBucket(world.prefix));
    await store.delete(`sha256-${job!.documents[0]!.sha256}`);
    await call(client, "cancelJob", { id: blocker.job!.id }, alice);

    const seen: string[] = [];
    const failed = await waitForJob(
      client,
      job!.id,
      alice,
      (j) => {
        seen.push(j.message);
        return statusName(j) === "JOB_STATUS_FAILED";
      },
      30_000,
    );
    expect(failed.attempts).toBe(3);
    expect(failed.errorReason).toBe("PROCESSING_FAILED");
    expect(failed.error).toMatch(/^processing failed 3 times; last error: .*missing/);
    expect(seen.some((m) => /^attempt 1 failed \(.*\); retrying in 1 s$/.test(m))).toBe(true);

    const dead = await eventually(async () => {
      const messages = (await streamMessages(world, "DLQ")).filter((m) => m.body.jobId === job!.id);
      return messages.length ? messages[0] : undefined;
    });
    expect(dead.subject).toBe("dlq.ingest.ingest-workers");
    expect(dead.body).toMatchObject({ jobId: job!.id, generation: 1 });
    const failedEvent = await eventually(async () => (await streamMessages(world, "INGEST")).find((e) => e.subject === `ingest.job.failed.${job!.id}`));
    expect(failedEvent.body).toMatchObject({ errorReason: "PROCESSING_FAILED", attempts: 3 });

    // The same bytes uploaded again put the PDF back; RetryJob then starts the job over.
    const again = await upload(client, { token: alice, courseTitle: "Same file", files: [{ filename: "notes.pdf", bytes }] });
    expect(again.job!.documents[0]!.sha256).toBe(job!.documents[0]!.sha256);
    const retried = (await call<{ id: string }, { job: Job }>(client, "retryJob", { id: job!.id }, alice)).job;
    expect(statusName(retried)).toBe("JOB_STATUS_PENDING");
    expect(retried.attempts).toBe(0);
    expect(retried.error).toBe("");
    const done = await waitForJob(client, job!.id, alice, undefined, 30_000);
    expect(statusName(done)).toBe("JOB_STATUS_COMPLETED");
    expect(done.attempts).toBe(1);
    expect(done.progress).toBe(100);
    expect(done.result!.modules).toHaveLength(4);
  }, 90_000);

  test("above INGEST_MAX_QUEUED live jobs, uploads are refused with RESOURCE_EXHAUSTED QUEUE_FULL and a retry delay", async () => {
    const files = [{ filename: "long.pdf", bytes: slowPdf }];
    const queued: string[] = [];
    for (let i = 0; i < 3; i++) {
      const answer = await upload(client, { token: alice, courseTitle: `Queued ${i}`, files });
      expect(answer.error).toBeUndefined();
      queued.push(answer.job!.id);
    }
    const refused = await upload(client, { token: alice, courseTitle: "One too many", files });
    expect(refused.error).toMatchObject({ code: 8, reason: "QUEUE_FULL" });
    expect(refused.error!.retryDelayMs).toBeGreaterThan(0);
    for (const id of queued) await call(client, "cancelJob", { id }, alice);
    const accepted = await upload(client, { token: alice, courseTitle: "Room again", files: [{ filename: "small.pdf", bytes: (await coursePdf()).bytes }] });
    expect(accepted.error).toBeUndefined();
  }, 60_000);
});
