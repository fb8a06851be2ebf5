/**
 * Real parts for ingest's integration tests: the ingest process on its own database and NATS
 * prefix, a gRPC client that uploads in chunks like a real client, and the JetStream streams to
 * read events back from. Everything listens on and talks to 127.0.0.1 only.
 */
import * as grpc from "@grpc/grpc-js";
import { jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { Objm } from "@nats-io/obj";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import {
  IngestServiceClient,
  JobStatus,
  type Job,
  type UploadDocumentRequest,
  type UploadDocumentResponse,
} from "@coursemesh/proto/coursemesh/ingest/v1/ingest";
import type { Role } from "@coursemesh/shared/auth.ts";
import { deleteStreams, streamName, type StreamName } from "@coursemesh/shared/events/index.ts";
import { unary } from "@coursemesh/shared/grpc/client.ts";
import { decodeGrpcError, type DecodedError } from "@coursemesh/shared/grpc/errors.ts";
import {
  createTestDatabase,
  startServiceProcess,
  testNatsPrefix,
  testToken,
  TEST_NATS_URL,
  type ServiceProcess,
  type TestDatabase,
} from "@coursemesh/shared/testing/harness.ts";
import { documentsBucket } from "../src/document-store.ts";
import { eventually } from "@coursemesh/shared/testing/eventually.ts";
export { eventually };

/** Settings that keep a test run quick and small (the server reserves stream and bucket sizes up front). */
export const TEST_ENV: Record<string, string> = {
  INGEST_DOCUMENTS_MAX_BYTES: String(256 * 1024 * 1024),
  INGEST_MAX_BYTES: String(8 * 1024 * 1024),
  INGEST_ACK_WAIT_MS: "2000",
  INGEST_RETRY_BACKOFF_MS: "200",
  INGEST_SWEEP_INTERVAL_MS: "3600000",
  // The harness learns the ports from the "ready" line, logged at info.
  LOG_LEVEL: "info",
};

/** One test file's world: its database, NATS prefix and a NATS connection to look at streams. */
export interface IngestWorld {
  db: TestDatabase;
  prefix: string;
  nats: NatsConnection;
  jsm: JetStreamManager;
  env: Record<string, string>;
  start(extra?: Record<string, string>): Promise<ServiceProcess>;
  cleanup(): Promise<void>;
}

/** Creates a database and prefix for a test file; `start` runs an ingest process on them. */
export async function createWorld(): Promise<IngestWorld> {
  const db = await createTestDatabase();
  const prefix = testNatsPrefix();
  const nats = await connect({ servers: TEST_NATS_URL });
  const jsm = await jetstreamManager(nats);
  const env = { ...TEST_ENV, DATABASE_URL: db.url, NATS_PREFIX: prefix };
  const started: ServiceProcess[] = [];
  return {
    db,
    prefix,
    nats,
    jsm,
    env,
    async start(extra = {}) {
      const service = await startServiceProcess("ingest", { env: { ...env, ...extra }, timeoutMs: 60_000 });
      started.push(service);
      return service;
    },
    async cleanup() {
      for (const service of started) if (service.process.exitCode === null) await service.kill();
      await deleteStreams(jsm, prefix, ["INGEST", "WORK", "DLQ"]).catch(() => {});
      await new Objm(nats)
        .open(documentsBucket(prefix))
        .then((store) => store.destroy())
        .catch(() => {});
      await nats.close();
      await db.drop();
    },
  };
}

/** A client for the service under test. */
export function ingestClient(address: string): IngestServiceClient {
  return new IngestServiceClient(address, grpc.credentials.createInsecure(), { "grpc.max_send_message_length": 16 * 1024 * 1024 });
}

/** A token for a test user. */
export const tokenFor = (subject: string, roles: Role[] = ["registrar"]) => testToken(subject, roles);

export interface UploadFile {
  filename: string;
  bytes: Uint8Array;
  contentType?: string;
}

export interface UploadOptions {
  token?: string;
  courseTitle: string;
  idempotencyKey?: string;
  files: UploadFile[];
  /** Bytes per `data` message. */
  chunkSize?: number;
  /** Pause after each chunk, to see what happens while a slow client is still sending. */
  chunkDelayMs?: number;
  /** Messages sent as given (to test out-of-order streams); replaces the ones built from the options. */
  raw?: UploadDocumentRequest[];
}

export interface UploadOutcome {
  job?: Job;
  error?: DecodedError;
  /** Bytes the client had written when the answer came. */
  bytesSent: number;
  elapsedMs: number;
}

/** Uploads over the UploadDocument client stream, in chunks; resolves with the job or the decoded error. */
export function upload(client: IngestServiceClient, options: UploadOptions): Promise<UploadOutcome> {
  const metadata = new grpc.Metadata();
  if (options.token) metadata.set("authorization", `Bearer ${options.token}`);
  const started = performance.now();
  let bytesSent = 0;
  let answered = false;
  return new Promise((resolve) => {
    const call = client.uploadDocument(metadata, (error: grpc.ServiceError | null, response?: UploadDocumentResponse) => {
      answered = true;
      const elapsedMs = performance.now() - started;
      resolve(error ? { error: decodeGrpcError(error), bytesSent, elapsedMs } : { job: response!.job, bytesSent, elapsedMs });
    });
    call.on("error", () => {});
    const messages: UploadDocumentRequest[] = options.raw ?? [
      { chunk: { $case: "job", value: { courseTitle: options.courseTitle, idempotencyKey: options.idempotencyKey ?? "" } } },
      ...options.files.flatMap((file) => {
        const size = options.chunkSize ?? 256 * 1024;
        const parts: UploadDocumentRequest[] = [{ chunk: { $case: "file", value: { filename: file.filename, contentType: file.contentType ?? "application/pdf" } } }];
        for (let offset = 0; offset < file.bytes.length; offset += size) {
          parts.push({ chunk: { $case: "data", value: Buffer.from(file.bytes.subarray(offset, offset + size)) } });
        }
        return parts;
      }),
    ];
    void (async () => {
      for (const message of messages) {
        if (answered) return;
        if (message.chunk?.$case === "data") bytesSent += message.chunk.value.length;
        if (!call.write(message)) await new Promise((r) => call.once("drain", r));
        if (options.chunkDelayMs) await Bun.sleep(options.chunkDelayMs);
      }
      call.end();
    })();
  });
}

/** Calls a unary RPC with a token; resolves with the response or throws the decoded error. */
export async function call<Q, R>(client: IngestServiceClient, method: keyof IngestServiceClient, request: Q, token?: string): Promise<R> {
  const fn = (client[method] as Function).bind(client);
  try {
    return await unary<Q, R>(fn, request, { token });
  } catch (error) {
    throw Object.assign(new Error(`${String(method)} failed: ${(error as Error).message}`), { decoded: decodeGrpcError(error) });
  }
}

/** The decoded gRPC error of a failing call. */
export async function callError(promise: Promise<unknown>): Promise<DecodedError> {
  try {
    await promise;
  } catch (error) {
    return (error as { decoded?: DecodedError }).decoded ?? decodeGrpcError(error);
  }
  throw new Error("expected the call to fail");
}

/** Reads a job. */
export async function getJob(client: IngestServiceClient, id: string, token: string): Promise<Job> {
  return (await call<{ id: string }, { job: Job }>(client, "getJob", { id }, token)).job;
}

const TERMINAL = [JobStatus.JOB_STATUS_COMPLETED, JobStatus.JOB_STATUS_FAILED, JobStatus.JOB_STATUS_CANCELLED];

/** Polls GetJob until `done(job)` (by default: a terminal status). */
export async function waitForJob(
  client: IngestServiceClient,
  id: string,
  token: string,
  done: (job: Job) => boolean = (job) => TERMINAL.includes(job.status),
  timeoutMs = 30_000,
): Promise<Job> {
  const deadline = Date.now() + timeoutMs;
  let job = await getJob(client, id, token);
  while (!done(job)) {
    if (Date.now() > deadline) throw new Error(`job ${id} still ${JobStatus[job.status]} (${job.progress}%, "${job.message}") after ${timeoutMs} ms`);
    await Bun.sleep(50);
    job = await getJob(client, id, token);
  }
  return job;
}

/** Every message of a WatchJob stream until it ends (or the timeout passes). */
export function watchJob(client: IngestServiceClient, id: string, token: string, timeoutMs = 30_000): Promise<{ jobs: Job[]; error?: DecodedError }> {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return new Promise((resolve) => {
    const jobs: Job[] = [];
    const stream = client.watchJob({ id }, metadata, { deadline: Date.now() + timeoutMs });
    stream.on("data", (message: { job: Job }) => jobs.push(message.job));
    stream.on("error", (error) => resolve({ jobs, error: decodeGrpcError(error) }));
    stream.on("end", () => resolve({ jobs }));
  });
}

/** The messages of one of the test's streams (INGEST, WORK, DLQ), as subject and parsed JSON. */
export async function streamMessages(world: IngestWorld, stream: StreamName): Promise<{ subject: string; headers: Record<string, string>; body: Record<string, unknown> }[]> {
  const name = streamName(world.prefix, stream);
  const info = await world.jsm.streams.info(name);
  const out: { subject: string; headers: Record<string, string>; body: Record<string, unknown> }[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
    const message = await world.jsm.streams.getMessage(name, { seq }).catch(() => null);
    if (!message) continue;
    const headers: Record<string, string> = {};
    for (const key of message.header?.keys() ?? []) headers[key] = message.header!.get(key);
    out.push({ subject: message.subject.slice(world.prefix.length + 1), headers, body: message.json<Record<string, unknown>>() });
  }
  return out;
}

/** Multipart body for POST /v1/uploads. */
export function uploadForm(fields: Record<string, string>, files: UploadFile[]): FormData {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.append(name, value);
  for (const file of files) form.append("files", new Blob([file.bytes], { type: file.contentType ?? "application/pdf" }), file.filename);
  return form;
}
