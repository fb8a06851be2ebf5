/**
 * Taking an upload: files are checked while they stream in (size limit, PDF by content), then the
 * bytes go to the object store, then the job row, its documents and its work item commit in one
 * transaction. The answer comes once both are durable; processing happens in the background.
 */
import { createHash, type Hash } from "node:crypto";
import type { Sql } from "@coursemesh/shared/db.ts";
import { transaction } from "@coursemesh/shared/db.ts";
import { alreadyExists, invalidArgument, resourceExhausted } from "@coursemesh/shared/grpc/errors.ts";
import { currentTraceparent, withSpan } from "@coursemesh/shared/telemetry.ts";
import type { DocumentStore } from "./document-store.ts";
import { enqueueWork } from "./job-events.ts";
import { countLiveJobs, findJobByIdempotencyKey, getJobDetail, insertJob, touchBlob, type JobDetail, type JobRow } from "./store.ts";

export const MAX_FILES_PER_UPLOAD = 100;
export const MAX_COURSE_TITLE_CHARS = 300;
const MAX_FILENAME_CHARS = 255;
const MAX_IDEMPOTENCY_KEY_CHARS = 200;
/** PDF readers accept the `%PDF-` header anywhere in the first KiB. */
const PDF_HEADER_WINDOW = 1024;
const PDF_MAGIC = Buffer.from("%PDF-");

export interface UploadLimits {
  /** Largest upload, all files together. */
  maxBytes: number;
  /** Jobs PENDING or PROCESSING above which uploads are refused. */
  maxQueued: number;
}

/** One file as received: its bytes in the chunks they came in, and their SHA-256. */
export interface ReceivedFile {
  filename: string;
  contentType: string;
  chunks: Uint8Array[];
  size: number;
  sha256: string;
}

export interface ReceivedUpload {
  courseTitle: string;
  idempotencyKey: string;
  files: ReceivedFile[];
}

/** RESOURCE_EXHAUSTED FILE_TOO_LARGE, naming the limit. */
export const fileTooLarge = (maxBytes: number) =>
  resourceExhausted("FILE_TOO_LARGE", `the upload is larger than ${formatBytes(maxBytes)} (INGEST_MAX_BYTES); split it into smaller uploads`, {
    metadata: { max_bytes: String(maxBytes) },
  });

/** "50 MiB", "512 KiB", "1000 bytes". */
export function formatBytes(bytes: number): string {
  if (bytes >= 1024 * 1024 && bytes % (1024 * 1024) === 0) return `${bytes / (1024 * 1024)} MiB`;
  if (bytes >= 1024 && bytes % 1024 === 0) return `${bytes / 1024} KiB`;
  return `${bytes} bytes`;
}

const notAPdf = (filename: string) =>
  invalidArgument("NOT_A_PDF", `${filename || "the file"} is not a PDF (it does not start with %PDF-); upload PDF documents only`, {
    fieldViolations: [{ field: "files", description: `${filename || "file"} is not a PDF` }],
    metadata: { filename },
  });

/**
 * Receives an upload piece by piece (gRPC chunks or multipart parts) and refuses it as soon as it
 * breaks a rule: over the size limit while streaming, not a PDF after its first KiB.
 */
export class UploadReceiver {
  private courseTitle: string | undefined;
  private idempotencyKey = "";
  private readonly files: ReceivedFile[] = [];
  private current: { file: ReceivedFile; hash: Hash; head: Buffer; checked: boolean } | undefined;
  private total = 0;

  constructor(private readonly limits: Pick<UploadLimits, "maxBytes">) {}

  /** Whether the job's header (course title) has been given. */
  get hasHeader(): boolean {
    return this.courseTitle !== undefined;
  }

  get receivedFiles(): number {
    return this.files.length + (this.current ? 1 : 0);
  }

  /** The job's header: course title and optional idempotency key. */
  header(courseTitle: string, idempotencyKey: string): void {
    const title = courseTitle.replace(/\s+/g, " ").trim();
    if (!title) {
      throw invalidArgument("COURSE_TITLE_REQUIRED", "course_title is required, e.g. \"CMPUT 201: Practical Programming Methodology\"", {
        fieldViolations: [{ field: "course_title", description: "must not be empty" }],
      });
    }
    if (title.length > MAX_COURSE_TITLE_CHARS) {
      throw invalidArgument("COURSE_TITLE_TOO_LONG", `course_title is ${title.length} characters; the limit is ${MAX_COURSE_TITLE_CHARS}`, {
        fieldViolations: [{ field: "course_title", description: `at most ${MAX_COURSE_TITLE_CHARS} characters` }],
      });
    }
    const key = idempotencyKey.trim();
    if (key.length > MAX_IDEMPOTENCY_KEY_CHARS) {
      throw invalidArgument("INVALID_ID", `idempotency_key is longer than ${MAX_IDEMPOTENCY_KEY_CHARS} characters`, {
        fieldViolations: [{ field: "idempotency_key", description: `at most ${MAX_IDEMPOTENCY_KEY_CHARS} characters` }],
      });
    }
    this.courseTitle = title;
    this.idempotencyKey = key;
  }

  /** Starts a new file; the data that follows is its content. */
  startFile(filename: string, contentType: string): void {
    this.endFile();
    if (this.files.length + 1 > MAX_FILES_PER_UPLOAD) {
      throw invalidArgument("TOO_MANY_FILES", `an upload holds at most ${MAX_FILES_PER_UPLOAD} files`, {
        fieldViolations: [{ field: "files", description: `at most ${MAX_FILES_PER_UPLOAD}` }],
      });
    }
    const name = (filename.split(/[\\/]/).pop() ?? "").trim().slice(0, MAX_FILENAME_CHARS) || `document-${this.files.length + 1}.pdf`;
    this.current = {
      file: { filename: name, contentType: contentType.trim().slice(0, 200) || "application/pdf", chunks: [], size: 0, sha256: "" },
      hash: createHash("sha256"),
      head: Buffer.alloc(0),
      checked: false,
    };
  }

  /** The next bytes of the current file. */
  data(chunk: Uint8Array): void {
    const current = this.current;
    if (!current) {
      throw invalidArgument("UPLOAD_OUT_OF_ORDER", "data came before a file header; send `file` before its `data`");
    }
    if (chunk.byteLength === 0) return;
    this.total += chunk.byteLength;
    if (this.total > this.limits.maxBytes) throw fileTooLarge(this.limits.maxBytes);
    current.file.chunks.push(chunk);
    current.file.size += chunk.byteLength;
    current.hash.update(chunk);
    if (!current.checked) {
      current.head = Buffer.concat([current.head, chunk.subarray(0, PDF_HEADER_WINDOW - current.head.length)]);
      if (current.head.includes(PDF_MAGIC)) current.checked = true;
      else if (current.head.length >= PDF_HEADER_WINDOW) throw notAPdf(current.file.filename);
    }
  }

  private endFile(): void {
    const current = this.current;
    if (!current) return;
    this.current = undefined;
    if (current.file.size === 0) {
      throw invalidArgument("NO_FILES", `${current.file.filename} is empty`, {
        fieldViolations: [{ field: "files", description: `${current.file.filename} has no bytes` }],
      });
    }
    if (!current.checked) throw notAPdf(current.file.filename);
    current.file.sha256 = current.hash.digest("hex");
    this.files.push(current.file);
  }

  /** Ends the upload: every rule checked, the files complete. */
  finish(): ReceivedUpload {
    this.endFile();
    if (this.courseTitle === undefined) this.header("", "");
    if (this.files.length === 0) {
      throw invalidArgument("NO_FILES", "the upload has no files; attach at least one PDF", {
        fieldViolations: [{ field: "files", description: "at least one PDF" }],
      });
    }
    return { courseTitle: this.courseTitle!, idempotencyKey: this.idempotencyKey, files: this.files };
  }
}

/** Refuses new work while too many jobs wait (checked before the bytes are read, and again before the job is written). */
export async function assertQueueHasRoom(sql: Sql, maxQueued: number): Promise<void> {
  const live = await countLiveJobs(sql);
  if (live >= maxQueued) {
    throw resourceExhausted("QUEUE_FULL", `${live} jobs are waiting to be processed (the limit is ${maxQueued}); try again shortly`, {
      retryDelayMs: 5000,
    });
  }
}

function fingerprintOf(upload: ReceivedUpload): string {
  const hash = createHash("sha256").update(upload.courseTitle);
  for (const file of upload.files) hash.update(`\0${file.filename}\0${file.sha256}`);
  return hash.digest("hex");
}

export interface AcceptDeps {
  sql: Sql;
  documents: DocumentStore;
  limits: UploadLimits;
}

/** The answer to a repeated idempotency key: the same job, or ALREADY_EXISTS if the upload differs. */
async function replay(sql: Sql, existing: JobRow, fingerprint: string): Promise<JobDetail> {
  if (existing.fingerprint !== fingerprint) {
    throw alreadyExists(
      "IDEMPOTENCY_KEY_REUSED",
      `idempotency_key "${existing.idempotencyKey}" was already used for another upload (job ${existing.id}); use a new key for a new upload`,
      { metadata: { job_id: existing.id } },
    );
  }
  return (await getJobDetail(sql, existing.id))!;
}

/**
 * Stores the files and creates the PENDING job with its work item; the same owner's idempotency
 * key returns the job it made before.
 */
export async function acceptUpload(deps: AcceptDeps, owner: string, upload: ReceivedUpload): Promise<JobDetail> {
  const { sql, documents } = deps;
  const fingerprint = fingerprintOf(upload);
  if (upload.idempotencyKey) {
    const existing = await findJobByIdempotencyKey(sql, owner, upload.idempotencyKey);
    if (existing) return replay(sql, existing, fingerprint);
  }
  await assertQueueHasRoom(sql, deps.limits.maxQueued);

  const unique = new Map(upload.files.map((file) => [file.sha256, file]));
  await withSpan("ingest.store_documents", { attributes: { "coursemesh.ingest.files": upload.files.length } }, () =>
    Promise.all(
      [...unique.values()].map(async (file) => {
        // The row first: from now on the sweeper leaves this blob alone for its grace period. A new
        // row means no copy can be stored yet, which saves asking the object store.
        const fresh = await touchBlob(sql, file.sha256, file.size);
        await documents.put(file.sha256, file.chunks, file.size, !fresh);
      }),
    ),
  );

  const jobId = Bun.randomUUIDv7();
  const created = await transaction(sql, "ingest.create_job", async (tx) => {
    const inserted = await insertJob(tx, {
      id: jobId,
      owner,
      courseTitle: upload.courseTitle,
      idempotencyKey: upload.idempotencyKey,
      fingerprint,
      traceparent: currentTraceparent() ?? null,
      documents: upload.files.map((f) => ({ filename: f.filename, contentType: f.contentType, sizeBytes: f.size, sha256: f.sha256 })),
    });
    if (inserted) await enqueueWork(tx, inserted);
    return inserted;
  });
  if (!created) {
    // A concurrent twin with the same key won the insert.
    const existing = await findJobByIdempotencyKey(sql, owner, upload.idempotencyKey);
    return replay(sql, existing!, fingerprint);
  }
  return created;
}
