/**
 * Ingest's part of `bun run dev`: uploads a real course document (the GNU Libtasn1 manual, the
 * test fixture) over gRPC, follows the job with WatchJob as it runs in the background, and prints
 * the course outline it built.
 */
import * as grpc from "@grpc/grpc-js";
import { IngestServiceClient, JobStatus, type Job, type UploadDocumentResponse } from "@coursemesh/proto/coursemesh/ingest/v1/ingest";
import { mintToken } from "@coursemesh/shared/auth.ts";
import { SERVICE_PORTS } from "@coursemesh/shared/config.ts";
import { createClient } from "@coursemesh/shared/grpc/client.ts";

const DEMO_PDF = new URL("../test/fixtures/libtasn1.pdf", import.meta.url).pathname;
const CHUNK_BYTES = 256 * 1024;

function uploadDocument(client: IngestServiceClient, token: string, courseTitle: string, filename: string, bytes: Uint8Array): Promise<Job> {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return new Promise((resolve, reject) => {
    const call = client.uploadDocument(metadata, (error: grpc.ServiceError | null, response?: UploadDocumentResponse) =>
      error ? reject(error) : resolve(response!.job!),
    );
    call.write({ chunk: { $case: "job", value: { courseTitle, idempotencyKey: `dev-demo-${Date.now()}` } } });
    call.write({ chunk: { $case: "file", value: { filename, contentType: "application/pdf" } } });
    for (let offset = 0; offset < bytes.length; offset += CHUNK_BYTES) {
      call.write({ chunk: { $case: "data", value: Buffer.from(bytes.subarray(offset, offset + CHUNK_BYTES)) } });
    }
    call.end();
  });
}

function watch(client: IngestServiceClient, token: string, id: string, onUpdate: (job: Job) => void): Promise<Job> {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return new Promise((resolve, reject) => {
    let last: Job | undefined;
    const stream = client.watchJob({ id }, metadata, { deadline: Date.now() + 120_000 });
    stream.on("data", ({ job }: { job: Job }) => {
      last = job;
      onUpdate(job);
    });
    stream.on("error", reject);
    stream.on("end", () => (last ? resolve(last) : reject(new Error("WatchJob ended without a job"))));
  });
}

/** Uploads a PDF, watches the job to its end and prints the outline. */
export async function runDemo({ secret, say }: { secret: string; say: (line: string) => void }): Promise<void> {
  const address = `127.0.0.1:${SERVICE_PORTS.ingest.grpc}`;
  const token = await mintToken({ subject: "registrar-1", roles: ["registrar"], secret });
  const client = createClient(IngestServiceClient, address, { caller: "dev-demo", defaultDeadlineMs: 30_000 });
  try {
    const bytes = new Uint8Array(await Bun.file(DEMO_PDF).arrayBuffer());
    const started = performance.now();
    const job = await uploadDocument(client, token, "ASN.1 and DER with GNU Libtasn1", "libtasn1.pdf", bytes);
    say(`ingest: uploaded libtasn1.pdf (${Math.round(bytes.length / 1024)} KiB) over gRPC → job ${job.id}, ${JobStatus[job.status]} in ${Math.round(performance.now() - started)} ms`);
    let lastMessage = "";
    const done = await watch(client, token, job.id, (update) => {
      if (update.message !== lastMessage) say(`ingest:   ${String(update.progress).padStart(3)}%  ${update.message}`);
      lastMessage = update.message;
    });
    if (done.status !== JobStatus.JOB_STATUS_COMPLETED || !done.result) {
      say(`ingest: the job ended ${JobStatus[done.status]}: ${done.error}`);
      return;
    }
    const outline = done.result;
    say(`ingest: outline of "${outline.courseTitle}" (course ${outline.courseId}), ${outline.pageCount} pages, ${outline.modules.length} modules:`);
    for (const module of outline.modules) {
      say(`ingest:   • ${module.title}  (pages ${module.startPage}–${module.endPage})`);
      say(`ingest:       key terms: ${module.keyTerms.join(", ")}`);
      say(`ingest:       ${module.summary.length > 160 ? `${module.summary.slice(0, 157).replace(/\s+\S*$/, "")}…` : module.summary}`);
    }
    say(
      `ingest: try it with curl: curl -H "authorization: Bearer <token>" -F files=@notes.pdf -F course_title="My course" http://127.0.0.1:${SERVICE_PORTS.ingest.http}/v1/uploads`,
    );
  } finally {
    client.close();
  }
}
