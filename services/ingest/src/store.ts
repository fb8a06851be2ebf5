/**
 * Ingest's SQL, one named function per statement (or per transaction step, taking the caller's
 * `tx`). Nothing else lives here.
 */
import type { Sql, Tx } from "@coursemesh/shared/db.ts";

type Db = Sql | Tx;

export type JobStatusName = "PENDING" | "PROCESSING" | "COMPLETED" | "FAILED" | "CANCELLED";

export interface DocumentRow {
  position: number;
  filename: string;
  contentType: string;
  sizeBytes: number;
  sha256: string;
  pageCount: number | null;
}

export interface ModuleRow {
  title: string;
  summary: string;
  keyTerms: string[];
  startPage: number;
  endPage: number;
}

export interface CourseRow {
  id: string;
  jobId: string;
  owner: string;
  title: string;
  pageCount: number;
  createdAt: Date;
  modules: ModuleRow[];
}

export interface JobRow {
  id: string;
  owner: string;
  courseTitle: string;
  idempotencyKey: string;
  fingerprint: string;
  status: JobStatusName;
  progress: number;
  message: string;
  error: string;
  errorReason: string;
  attempts: number;
  generation: number;
  version: number;
  leaseOwner: string | null;
  leaseUntil: Date | null;
  createdAt: Date;
  updatedAt: Date;
  startedAt: Date | null;
  completedAt: Date | null;
  traceparent: string | null;
  courseId: string | null;
}

export interface JobDetail extends JobRow {
  documents: DocumentRow[];
  course: CourseRow | null;
}

const JOB_COLUMNS = (sql: Db) => sql`
  j.id, j.owner, j.course_title, j.idempotency_key, j.fingerprint, j.status, j.progress, j.message, j.error, j.error_reason,
  j.attempts, j.generation, j.version, j.lease_owner, j.lease_until, j.created_at, j.updated_at, j.started_at, j.completed_at,
  j.traceparent, (select c.id from courses c where c.job_id = j.id) as course_id`;

function toJob(row: Record<string, unknown>): JobRow {
  return {
    id: row.id as string,
    owner: row.owner as string,
    courseTitle: row.course_title as string,
    idempotencyKey: row.idempotency_key as string,
    fingerprint: row.fingerprint as string,
    status: row.status as JobStatusName,
    progress: row.progress as number,
    message: row.message as string,
    error: row.error as string,
    errorReason: row.error_reason as string,
    attempts: row.attempts as number,
    generation: row.generation as number,
    version: Number(row.version),
    leaseOwner: (row.lease_owner as string | null) ?? null,
    leaseUntil: (row.lease_until as Date | null) ?? null,
    createdAt: row.created_at as Date,
    updatedAt: row.updated_at as Date,
    startedAt: (row.started_at as Date | null) ?? null,
    completedAt: (row.completed_at as Date | null) ?? null,
    traceparent: (row.traceparent as string | null) ?? null,
    courseId: (row.course_id as string | null) ?? null,
  };
}

function toDocument(row: Record<string, unknown>): DocumentRow {
  return {
    position: row.position as number,
    filename: row.filename as string,
    contentType: row.content_type as string,
    sizeBytes: Number(row.size_bytes),
    sha256: row.sha256 as string,
    pageCount: (row.page_count as number | null) ?? null,
  };
}

// --- blobs -----------------------------------------------------------------------------------

/**
 * Marks a blob as in use before it is written, so the sweeper leaves it alone for its grace
 * period; true when the row is new (so the object cannot be stored yet).
 */
export async function touchBlob(sql: Db, sha256: string, sizeBytes: number): Promise<boolean> {
  const [row] = await sql`
    insert into blobs (sha256, size_bytes) values (${sha256}, ${sizeBytes})
    on conflict (sha256) do update set touched_at = now()
    returning (xmax = 0) as inserted`;
  return Boolean(row?.inserted);
}

/** Locks blobs that no document refers to and nobody touched since `cutoff` (skipping rows others hold). */
export async function lockUnreferencedBlobs(tx: Tx, cutoff: Date, limit: number): Promise<string[]> {
  const rows = await tx`
    select b.sha256 from blobs b
    where b.touched_at < ${cutoff} and not exists (select 1 from documents d where d.sha256 = b.sha256)
    order by b.touched_at
    limit ${limit}
    for update skip locked`;
  return rows.map((r) => r.sha256 as string);
}

/** Forgets blobs (after they were deleted from the object store). */
export async function deleteBlobRows(tx: Tx, sha256s: string[]): Promise<void> {
  await tx`delete from blobs where sha256 = any(${sha256s}::text[])`;
}

/** Of the given hashes, those that have a blobs row. */
export async function knownBlobs(sql: Db, sha256s: string[]): Promise<Set<string>> {
  const rows = await sql`select sha256 from blobs where sha256 = any(${sha256s}::text[])`;
  return new Set(rows.map((r) => r.sha256 as string));
}

// --- jobs: intake ----------------------------------------------------------------------------

/** PENDING and PROCESSING jobs, for the queue limit. */
export async function countLiveJobs(sql: Db): Promise<number> {
  const [row] = await sql`select count(*)::int as n from jobs where status in ('PENDING', 'PROCESSING')`;
  return row!.n as number;
}

/** The job an owner created with an idempotency key, if any. */
export async function findJobByIdempotencyKey(sql: Db, owner: string, idempotencyKey: string): Promise<JobRow | undefined> {
  const [row] = await sql`select ${JOB_COLUMNS(sql)} from jobs j where j.owner = ${owner} and j.idempotency_key = ${idempotencyKey}`;
  return row ? toJob(row) : undefined;
}

export interface NewJob {
  id: string;
  owner: string;
  courseTitle: string;
  idempotencyKey: string;
  fingerprint: string;
  traceparent: string | null;
  documents: Omit<DocumentRow, "position" | "pageCount">[];
}

/**
 * Inserts a PENDING job and its documents and returns it; undefined (inserting nothing) when the
 * owner's idempotency key is already taken, so a concurrent twin of the upload loses cleanly.
 */
export async function insertJob(tx: Tx, job: NewJob): Promise<JobDetail | undefined> {
  // One statement (one round trip on the upload's path): the documents go in only if the job did.
  const [row] = await tx`
    with job as (
      insert into jobs (id, owner, course_title, idempotency_key, fingerprint, status, message, traceparent)
      values (${job.id}, ${job.owner}, ${job.courseTitle}, ${job.idempotencyKey}, ${job.fingerprint}, 'PENDING', 'queued', ${job.traceparent})
      on conflict (owner, idempotency_key) where idempotency_key <> '' do nothing
      returning *
    ), docs as (
      insert into documents (job_id, position, filename, content_type, size_bytes, sha256)
      select job.id, d.position - 1, d.filename, d.content_type, d.size_bytes, d.sha256
      from job, unnest(
        ${job.documents.map((d) => d.filename)}::text[],
        ${job.documents.map((d) => d.contentType)}::text[],
        ${job.documents.map((d) => d.sizeBytes)}::bigint[],
        ${job.documents.map((d) => d.sha256)}::text[]
      ) with ordinality as d(filename, content_type, size_bytes, sha256, position)
    )
    select *, null as course_id from job`;
  if (!row) return undefined;
  return {
    ...toJob(row),
    documents: job.documents.map((d, position) => ({ ...d, position, pageCount: null })),
    course: null,
  };
}

// --- jobs: reads -----------------------------------------------------------------------------

/** One job, without documents or outline. */
export async function getJobRow(sql: Db, id: string): Promise<JobRow | undefined> {
  const [row] = await sql`select ${JOB_COLUMNS(sql)} from jobs j where j.id = ${id}`;
  return row ? toJob(row) : undefined;
}

/** A job's documents in upload order. */
export async function listDocuments(sql: Db, jobId: string): Promise<DocumentRow[]> {
  return (await sql`select * from documents where job_id = ${jobId} order by position`).map(toDocument);
}

/** One job with its documents and, once completed, its outline. */
export async function getJobDetail(sql: Db, id: string): Promise<JobDetail | undefined> {
  const job = await getJobRow(sql, id);
  if (!job) return undefined;
  const documents = await listDocuments(sql, id);
  const course = job.courseId ? ((await getCourse(sql, job.courseId)) ?? null) : null;
  return { ...job, documents, course };
}

/** Locks a job's row for a state change inside `tx`. */
export async function lockJob(tx: Tx, id: string): Promise<JobRow | undefined> {
  const [row] = await tx`select ${JOB_COLUMNS(tx)} from jobs j where j.id = ${id} for update of j`;
  return row ? toJob(row) : undefined;
}

export interface JobPageQuery {
  /** Only this owner's jobs; undefined for all (operators). */
  owner?: string;
  status?: JobStatusName;
  /** Keyset: jobs created before this one (ids are UUIDv7, in creation order). */
  beforeId?: string;
  limit: number;
}

/** A page of jobs, newest first, with their documents and their outlines' headers (modules left out). */
export async function listJobs(sql: Db, query: JobPageQuery): Promise<JobDetail[]> {
  const rows = await sql`
    select ${JOB_COLUMNS(sql)} from jobs j
    where true
      ${query.owner !== undefined ? sql`and j.owner = ${query.owner}` : sql``}
      ${query.status ? sql`and j.status = ${query.status}` : sql``}
      ${query.beforeId ? sql`and j.id < ${query.beforeId}` : sql``}
    order by j.id desc
    limit ${query.limit}`;
  const jobs = rows.map(toJob);
  if (jobs.length === 0) return [];
  const ids = jobs.map((j) => j.id);
  const documents = await sql`select * from documents where job_id = any(${ids}::uuid[]) order by job_id, position`;
  const courses = await sql`select * from courses where job_id = any(${ids}::uuid[])`;
  return jobs.map((job) => {
    const course = courses.find((c) => c.job_id === job.id);
    return {
      ...job,
      documents: documents.filter((d) => d.job_id === job.id).map(toDocument),
      course: course ? { ...toCourseHeader(course), modules: [] } : null,
    };
  });
}

function toCourseHeader(course: Record<string, unknown>): Omit<CourseRow, "modules"> {
  return {
    id: course.id as string,
    jobId: course.job_id as string,
    owner: course.owner as string,
    title: course.title as string,
    pageCount: course.page_count as number,
    createdAt: course.created_at as Date,
  };
}

/** A course outline with its modules in order. */
export async function getCourse(sql: Db, courseId: string): Promise<CourseRow | undefined> {
  const [course] = await sql`select * from courses where id = ${courseId}`;
  if (!course) return undefined;
  const modules = await sql`select * from modules where course_id = ${courseId} order by position`;
  return {
    ...toCourseHeader(course),
    modules: modules.map((m) => ({
      title: m.title as string,
      summary: m.summary as string,
      keyTerms: m.key_terms as string[],
      startPage: m.start_page as number,
      endPage: m.end_page as number,
    })),
  };
}

// --- jobs: processing ------------------------------------------------------------------------

/** Starts (or resumes) processing under a lease: PROCESSING, one more attempt, a new version. */
export async function startAttempt(tx: Tx, id: string, leaseOwner: string, leaseMs: number): Promise<JobRow> {
  const [row] = await tx`
    update jobs set
      status = 'PROCESSING',
      attempts = attempts + 1,
      lease_owner = ${leaseOwner},
      lease_until = clock_timestamp() + ${leaseMs} * interval '1 millisecond',
      started_at = coalesce(started_at, clock_timestamp()),
      message = 'starting',
      version = version + 1,
      updated_at = clock_timestamp()
    where id = ${id}
    returning id`;
  if (!row) throw new Error(`job ${id} vanished while it was being claimed`);
  return (await getJobRow(tx, id))!;
}

/** Extends the lease while the holder still has the job in PROCESSING; false once it lost it. */
export async function renewLease(sql: Db, id: string, leaseOwner: string, leaseMs: number): Promise<boolean> {
  const rows = await sql`
    update jobs set lease_until = clock_timestamp() + ${leaseMs} * interval '1 millisecond'
    where id = ${id} and lease_owner = ${leaseOwner} and status = 'PROCESSING'
    returning id`;
  return rows.length > 0;
}

/**
 * Records progress for the lease holder; progress never goes backwards (a retried attempt keeps
 * the highest value reached). False once the holder lost the job.
 */
export async function recordProgress(sql: Db, id: string, leaseOwner: string, progress: number, message: string): Promise<boolean> {
  const rows = await sql`
    update jobs set
      progress = greatest(progress, ${progress}),
      message = ${message},
      version = version + 1,
      updated_at = clock_timestamp()
    where id = ${id} and lease_owner = ${leaseOwner} and status = 'PROCESSING'
      and (message is distinct from ${message} or progress < ${progress})
    returning id`;
  if (rows.length > 0) return true;
  const [still] = await sql`select 1 from jobs where id = ${id} and lease_owner = ${leaseOwner} and status = 'PROCESSING'`;
  return Boolean(still);
}

/** Page counts per document, once read. */
export async function setDocumentPages(tx: Tx, jobId: string, pages: number[]): Promise<void> {
  await tx`
    update documents d set page_count = p.pages
    from unnest(${pages}::int[]) with ordinality as p(pages, position)
    where d.job_id = ${jobId} and d.position = p.position - 1`;
}

/** Saves the outline as a course with its modules. */
export async function insertCourse(tx: Tx, course: Omit<CourseRow, "createdAt">): Promise<Date> {
  const [row] = await tx`
    insert into courses (id, job_id, owner, title, page_count) values (${course.id}, ${course.jobId}, ${course.owner}, ${course.title}, ${course.pageCount})
    returning created_at`;
  if (course.modules.length > 0) {
    await tx`
      insert into modules (course_id, position, title, summary, key_terms, start_page, end_page)
      select ${course.id}, m.position - 1, m.value->>'title', m.value->>'summary',
        array(select jsonb_array_elements_text(m.value->'keyTerms')), (m.value->>'startPage')::int, (m.value->>'endPage')::int
      from jsonb_array_elements(${JSON.stringify(course.modules)}::text::jsonb) with ordinality as m(value, position)`;
  }
  return row!.created_at as Date;
}

/** Moves a job to a terminal status (COMPLETED, FAILED or CANCELLED), releasing any lease. */
export async function finishJob(
  tx: Tx,
  id: string,
  outcome: { status: "COMPLETED" | "FAILED" | "CANCELLED"; message: string; error?: string; errorReason?: string },
): Promise<JobRow> {
  await tx`
    update jobs set
      status = ${outcome.status},
      progress = case when ${outcome.status} = 'COMPLETED' then 100 else progress end,
      message = ${outcome.message},
      error = ${outcome.error ?? ""},
      error_reason = ${outcome.errorReason ?? ""},
      lease_owner = null,
      lease_until = null,
      completed_at = clock_timestamp(),
      version = version + 1,
      updated_at = clock_timestamp()
    where id = ${id}`;
  return (await getJobRow(tx, id))!;
}

/** Puts a job back in the queue (after a transient failure, or for RetryJob with a new generation). */
export async function requeueJob(tx: Tx, id: string, options: { message: string; newGeneration: boolean; resetAttempts: boolean }): Promise<JobRow> {
  await tx`
    update jobs set
      status = 'PENDING',
      message = ${options.message},
      error = '',
      error_reason = '',
      lease_owner = null,
      lease_until = null,
      completed_at = null,
      attempts = case when ${options.resetAttempts} then 0 else attempts end,
      generation = generation + ${options.newGeneration ? 1 : 0},
      version = version + 1,
      updated_at = clock_timestamp()
    where id = ${id}`;
  return (await getJobRow(tx, id))!;
}

/** PROCESSING jobs whose lease ran out long ago: their worker is gone and no redelivery came. */
export async function lockAbandonedJobs(tx: Tx, cutoff: Date, limit: number): Promise<JobRow[]> {
  const rows = await tx`
    select ${JOB_COLUMNS(tx)} from jobs j
    where j.status = 'PROCESSING' and j.lease_until < ${cutoff}
    order by j.lease_until
    limit ${limit}
    for update of j skip locked`;
  return rows.map(toJob);
}

/** Jobs counted by status, for the scrape-time gauge. */
export async function countJobsByStatus(db: Db): Promise<Map<JobStatusName, number>> {
  const rows = await db`select status, count(*)::int as n from jobs group by status`;
  return new Map(rows.map((row) => [row.status as JobStatusName, row.n as number]));
}
