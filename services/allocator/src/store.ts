/**
 * The allocator's SQL, one named function per statement. Every status change of a course's requests
 * runs while its caller holds the course row's lock (`lockCourse`, `lockCourses`), which is what serialises
 * deciders, drops and capacity changes of one course across replicas.
 */
import type { Sql, Tx } from "@coursemesh/shared/db.ts";
import { eventIdPrefixSql, eventIdSql, insertOutboxRows } from "@coursemesh/shared/events/outbox.ts";

type Db = Sql | Tx;
type Row = Record<string, any>;

export type RequestStatus = "PENDING" | "ENROLLED" | "WAITLISTED" | "REJECTED" | "DROPPED";
export type DecidedStatus = "ENROLLED" | "WAITLISTED" | "REJECTED";

export interface CourseRecord {
  id: string;
  code: string;
  title: string;
  capacity: number;
  seatsTaken: number;
  waitlistLength: number;
  /** Undecided requests; counted when read (the accept path never touches the course row). */
  pending: number;
  version: number;
  createdAt: Date;
  updatedAt: Date;
}

/** A course row as locked by a writer: what it needs to decide and to describe its events. */
export interface LockedCourse {
  id: string;
  code: string;
  title: string;
  capacity: number;
  seatsTaken: number;
  waitlistLength: number;
  version: number;
}

export interface RequestRecord {
  id: string;
  idempotencyKey: string;
  courseId: string;
  courseCode: string;
  studentId: string;
  priority: number;
  status: RequestStatus;
  reason: string;
  createdAt: Date;
  decidedAt?: Date;
  enrolledAt?: Date;
  droppedAt?: Date;
  updatedAt: Date;
  /** While PENDING: 1-based place in the course's queue, in score order. */
  queuePosition?: number;
  /** While WAITLISTED: 1-based place on the waitlist. */
  waitlistPosition?: number;
}

const optionalDate = (value: unknown): Date | undefined => (value instanceof Date ? value : undefined);
const optionalInt = (value: unknown): number | undefined => (value === null || value === undefined ? undefined : Number(value));

function toCourse(row: Row): CourseRecord {
  return {
    id: row.id,
    code: row.code,
    title: row.title,
    capacity: row.capacity,
    seatsTaken: row.seats_taken,
    waitlistLength: row.waitlist_length,
    pending: Number(row.pending ?? 0),
    version: Number(row.version),
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

function toLockedCourse(row: Row): LockedCourse {
  return {
    id: row.id,
    code: row.code,
    title: row.title,
    capacity: row.capacity,
    seatsTaken: row.seats_taken,
    waitlistLength: row.waitlist_length,
    version: Number(row.version),
  };
}

function toRequest(row: Row): RequestRecord {
  return {
    id: row.id,
    idempotencyKey: row.idempotency_key,
    courseId: row.course_id,
    courseCode: row.course_code,
    studentId: row.student_id,
    priority: row.priority,
    status: row.status,
    reason: row.reason,
    createdAt: row.created_at,
    decidedAt: optionalDate(row.decided_at),
    enrolledAt: optionalDate(row.enrolled_at),
    droppedAt: optionalDate(row.dropped_at),
    updatedAt: row.updated_at,
    queuePosition: optionalInt(row.queue_position),
    waitlistPosition: optionalInt(row.waitlist_position),
  };
}

// Timestamps travel as text (`::text::timestamptz`): postgres.js would send a timestamptz parameter
// through a JS Date and lose the microseconds that order requests.

// ---------------------------------------------------------------------------------------------
// Courses

/** Inserts a course; null when its code is taken. */
export async function insertCourse(db: Db, course: { id: string; code: string; title: string; capacity: number }): Promise<CourseRecord | null> {
  const [row] = await db`
    insert into courses (id, code, title, capacity)
    values (${course.id}, ${course.code}, ${course.title}, ${course.capacity})
    on conflict (code) do nothing
    returning *, 0 as pending`;
  return row ? toCourse(row) : null;
}

/** A course with its live counters, or null. */
export async function selectCourse(db: Db, id: string): Promise<CourseRecord | null> {
  const [row] = await db`
    select c.*, (select count(*) from requests p where p.course_id = c.id and p.status = 'PENDING')::int as pending
    from courses c where c.id = ${id}`;
  return row ? toCourse(row) : null;
}

/** Courses ordered by code, after `afterCode` (a page). */
export async function selectCourses(db: Db, afterCode: string | null, limit: number): Promise<CourseRecord[]> {
  const rows = await db`
    select c.*, (select count(*) from requests p where p.course_id = c.id and p.status = 'PENDING')::int as pending
    from courses c
    where ${afterCode}::text is null or c.code > ${afterCode}
    order by c.code
    limit ${limit}`;
  return rows.map(toCourse);
}

/** The immutable facts of a course (existence and code), for the accept path's cache. */
export async function selectCourseCode(db: Db, id: string): Promise<string | null> {
  const [row] = await db`select code from courses where id = ${id}`;
  return row ? (row.code as string) : null;
}

/**
 * Locks a course row for a writer of its requests (waiting for the holder). `FOR NO KEY UPDATE` is
 * the FOR UPDATE that does not conflict with the KEY SHARE lock of a concurrent accept's
 * foreign-key check, so changing a course's requests never blocks accepting new ones.
 */
export async function lockCourse(tx: Tx, id: string): Promise<LockedCourse | null> {
  const [row] = await tx`select id, code, title, capacity, seats_taken, waitlist_length, version from courses where id = ${id} for no key update`;
  return row ? toLockedCourse(row) : null;
}

/** Writes a locked course's new title, capacity and counters. */
export async function updateCourseRow(
  tx: Tx,
  course: { id: string; title: string; capacity: number; seatsTaken: number; waitlistLength: number; version: number },
): Promise<void> {
  await tx`
    update courses
    set title = ${course.title}, capacity = ${course.capacity}, seats_taken = ${course.seatsTaken},
        waitlist_length = ${course.waitlistLength}, version = ${course.version}, updated_at = clock_timestamp()
    where id = ${course.id}`;
}

// ---------------------------------------------------------------------------------------------
// Accepting requests

export interface NewRequest {
  id: string;
  idempotencyKey: string;
  courseId: string;
  studentId: string;
  priority: number;
  traceparent: string | null;
}

export interface InsertedRequest {
  id: string;
  createdAt: Date;
  queuePosition: number;
}

/**
 * Inserts many requests with one statement (one commit for all their callers), arrival stamped by
 * the database's clock in the given order, and computes each one's queue position. Rows whose
 * idempotency key exists are skipped; the caller looks those up.
 *
 * Positions: the statement's snapshot does not see the rows it inserts, so a new row's place is the
 * existing queue ahead of the batch's first row, plus the existing rows interleaved with the batch
 * (usually none: later arrivals rank last), plus the new rows ahead of it.
 */
export async function insertRequests(sql: Sql, requests: readonly NewRequest[], priorityStepMs: number): Promise<InsertedRequest[]> {
  const rows = await sql`
    with input as (
      select * from unnest(
        ${requests.map((r) => r.id)}::uuid[], ${requests.map((r) => r.idempotencyKey)}::text[],
        ${requests.map((r) => r.courseId)}::uuid[], ${requests.map((r) => r.studentId)}::text[],
        ${requests.map((r) => r.priority)}::int[], ${requests.map((r) => r.traceparent ?? "")}::text[]
      ) as t(id, idempotency_key, course_id, student_id, priority, traceparent)
    ),
    stamped as (select input.*, clock_timestamp() as arrived from input),
    inserted as (
      insert into requests (id, idempotency_key, course_id, student_id, priority, status, created_at, score, updated_at, traceparent)
      select id, idempotency_key, course_id, student_id, priority, 'PENDING', arrived,
             arrived - make_interval(secs => priority * ${priorityStepMs}::int / 1000.0), arrived, nullif(traceparent, '')
      from stamped
      on conflict (idempotency_key) do nothing
      returning id, course_id, score, created_at
    ),
    heads as (
      select distinct on (course_id) course_id, score, id from inserted order by course_id, score, id
    ),
    ahead as materialized (
      select h.course_id,
        (select count(*) from requests p
         where p.course_id = h.course_id and p.status = 'PENDING' and (p.score, p.id) < (h.score, h.id)) as n
      from heads h
    ),
    interleaved as materialized (
      select h.course_id, p.score, p.id
      from heads h cross join lateral (
        -- "offset 0" keeps this a per-course index scan: flattened into a join, it read every
        -- pending request of every course.
        select p.score, p.id from requests p
        where p.course_id = h.course_id and p.status = 'PENDING' and (p.score, p.id) >= (h.score, h.id)
        offset 0
      ) p
    ),
    -- One window over the new rows and the interleaved ones (no per-row count, no join back).
    ranked as (
      select m.*,
        count(*) filter (where m.created_at is null) over w as existing_before,
        count(*) filter (where m.created_at is not null) over w as new_upto
      from (
        select course_id, score, id, created_at from inserted
        union all
        select course_id, score, id, null from interleaved
      ) m
      window w as (partition by m.course_id order by m.score, m.id)
    ),
    -- The courses' counts by array position, not by join (whose plan would hang on a guess).
    counts as materialized (select array_agg(course_id) as ids, array_agg(n) as ns from ahead)
    select r.id, r.created_at, (c.ns[array_position(c.ids, r.course_id)] + r.existing_before + r.new_upto)::int as queue_position
    from ranked r, counts c
    where r.created_at is not null`;
  return rows.map((row) => ({ id: row.id, createdAt: row.created_at, queuePosition: row.queue_position }));
}

/** Undecided requests of a course. */
export async function countPending(db: Db, courseId: string): Promise<number> {
  const [row] = await db`select count(*)::int as n from requests where course_id = ${courseId} and status = 'PENDING'`;
  return row!.n;
}

// ---------------------------------------------------------------------------------------------
// Reading requests

/** Requests by id, with positions computed now. */
export async function selectRequestsByIds(db: Db, ids: readonly string[]): Promise<RequestRecord[]> {
  if (ids.length === 0) return [];
  const rows = await db`
    select r.*, c.code as course_code,
      case when r.status = 'PENDING' then 1 + (select count(*) from requests p
        where p.course_id = r.course_id and p.status = 'PENDING' and (p.score, p.id) < (r.score, r.id))::int end as queue_position,
      case when r.status = 'WAITLISTED' then 1 + (select count(*) from requests w
        where w.course_id = r.course_id and w.status = 'WAITLISTED' and (w.score, w.id) < (r.score, r.id))::int end as waitlist_position
    from requests r join courses c on c.id = r.course_id
    where r.id = any(${ids as string[]}::uuid[])`;
  return rows.map(toRequest);
}

/** Requests by idempotency key, with positions computed now. */
export async function selectRequestsByKeys(db: Db, keys: readonly string[]): Promise<RequestRecord[]> {
  if (keys.length === 0) return [];
  const rows = await db`select id from requests where idempotency_key = any(${keys as string[]}::text[])`;
  return selectRequestsByIds(
    db,
    rows.map((row) => row.id as string),
  );
}

/** The student's live (ENROLLED or WAITLISTED) request in a course, if any. */
export async function selectLiveRequest(tx: Tx, courseId: string, studentId: string): Promise<{ id: string; status: "ENROLLED" | "WAITLISTED" } | null> {
  const [row] = await tx`
    select id, status from requests
    where course_id = ${courseId} and student_id = ${studentId} and status in ('ENROLLED', 'WAITLISTED')`;
  return row ? { id: row.id, status: row.status } : null;
}

/** Whether the student has an undecided request in the course. */
export async function hasPendingRequest(db: Db, courseId: string, studentId: string): Promise<boolean> {
  const [row] = await db`
    select exists (select 1 from requests where course_id = ${courseId} and student_id = ${studentId} and status = 'PENDING') as found`;
  return row!.found;
}

export interface PageKey {
  /** The ordering value of the last row, as Postgres prints it (microseconds kept). */
  at: string;
  id: string;
}

/** A course's seat holders in the order they got their seat (a page after `after`). */
export async function selectEnrolled(db: Db, courseId: string, after: PageKey | null, limit: number): Promise<(RequestRecord & { pageKey: PageKey })[]> {
  const rows = await db`
    select r.*, c.code as course_code, r.enrolled_at::text as page_at
    from requests r join courses c on c.id = r.course_id
    where r.course_id = ${courseId} and r.status = 'ENROLLED'
      and (${after?.at ?? null}::text::timestamptz is null or (r.enrolled_at, r.id) > (${after?.at ?? null}::text::timestamptz, ${after?.id ?? null}::uuid))
    order by r.enrolled_at, r.id
    limit ${limit}`;
  return rows.map((row) => ({ ...toRequest(row), pageKey: { at: row.page_at, id: row.id } }));
}

/** A student's requests, newest first, with positions computed now (a page after `after`). */
export async function selectStudentRequests(db: Db, studentId: string, after: PageKey | null, limit: number): Promise<(RequestRecord & { pageKey: PageKey })[]> {
  const page = await db`
    select r.id, r.created_at::text as page_at from requests r
    where r.student_id = ${studentId}
      and (${after?.at ?? null}::text::timestamptz is null or (r.created_at, r.id) < (${after?.at ?? null}::text::timestamptz, ${after?.id ?? null}::uuid))
    order by r.created_at desc, r.id desc
    limit ${limit}`;
  const records = new Map((await selectRequestsByIds(db, page.map((row) => row.id as string))).map((record) => [record.id, record]));
  return page.flatMap((row) => {
    const record = records.get(row.id);
    return record ? [{ ...record, pageKey: { at: row.page_at as string, id: row.id as string } }] : [];
  });
}

/** A course's waitlist in score order with positions computed now (a page after `after`). */
export async function selectWaitlist(db: Db, courseId: string, after: PageKey | null, limit: number): Promise<(RequestRecord & { pageKey: PageKey })[]> {
  const afterAt = after?.at ?? null;
  const afterId = after?.id ?? null;
  const rows = await db`
    with page as (
      select r.*, r.score::text as page_at from requests r
      where r.course_id = ${courseId} and r.status = 'WAITLISTED'
        and (${afterAt}::text::timestamptz is null or (r.score, r.id) > (${afterAt}::text::timestamptz, ${afterId}::uuid))
      order by r.score, r.id
      limit ${limit}
    ),
    before_page as (
      select count(*)::int as n from requests w
      where ${afterAt}::text::timestamptz is not null and w.course_id = ${courseId} and w.status = 'WAITLISTED'
        and (w.score, w.id) <= (${afterAt}::text::timestamptz, ${afterId}::uuid)
    )
    select p.*, c.code as course_code, (select n from before_page) + row_number() over (order by p.score, p.id) as waitlist_position
    from page p join courses c on c.id = p.course_id
    order by p.score, p.id`;
  return rows.map((row) => ({ ...toRequest(row), pageKey: { at: row.page_at, id: row.id } }));
}

// ---------------------------------------------------------------------------------------------
// Deciding

/** One request decided by a batch, in decision (score) order within its course. */
export interface DecidedRequest {
  id: string;
  courseId: string;
  status: DecidedStatus;
  /** From accept to decision. */
  waitedMs: number;
  /** The Enroll call's trace context, when the caller asked for it. */
  traceparent: string | null;
}

/** What one batch decided, and when (the database's clock; one time for the whole batch). */
export interface DecidedBatch {
  decidedAt: Date;
  requests: DecidedRequest[];
}

export interface DecideOptions {
  /** Most requests decided per course. */
  limit: number;
  holdMs: number;
  /** Return each request's stored traceparent (for span links; only worth it while tracing). */
  withTraceparents: boolean;
  /** Trace context stored with the outbox rows, so their publish continues the batch's trace. */
  traceparent: string | null;
  tracestate: string | null;
}

/** Where `lockCourses` leaves the ids it locked for the rest of its transaction (`decideBatch` reads it). */
const LOCKED_SETTING = "coursemesh.allocator_locked_courses";

/**
 * Locks the course rows of a batch that no other transaction holds (`lockCourse`'s lock, skipping
 * the held ones); returns the ids it locked and also leaves them in a transaction-local setting, so
 * the decision statement can be sent right behind this one without waiting for the answer.
 */
export async function lockCourses(tx: Tx, ids: readonly string[]): Promise<string[]> {
  const [row] = await tx`
    select set_config(${LOCKED_SETTING}, coalesce(string_agg(l.id::text, ','), ''), true) as locked
    from (select id from courses where id = any(${ids as string[]}::uuid[]) order by id for no key update skip locked) l`;
  const locked = row!.locked as string;
  return locked === "" ? [] : locked.split(",");
}

const EVENT_DECIDED = "coursemesh.events.v1.EnrollmentDecided";

/**
 * Decides up to `limit` pending requests of each course in `courseIds` that `lockCourses` locked
 * earlier in the same transaction (the others are left alone), with one statement. Per course: requests are taken in score order among those eligible
 * (score at least ALLOCATOR_HOLD_MS old); a student's first request competes for a seat, later
 * ones (and any whose student already holds or waits for a seat) are REJECTED; contenders get the
 * free seats in score order, the rest are WAITLISTED; the course's counters and version move by
 * what was decided; and each decision's `enrollment.decided` event goes into the outbox, numbered
 * with the course's versions in decision order. The statement runs after the locks were taken, so
 * its snapshot sees every earlier decision. Several courses share one statement and one commit
 * because a busy term has hundreds of courses with a few new requests each.
 *
 * The events are built here rather than in JavaScript and handed to `enqueueMany`: a batch decides
 * thousands of requests, and building, serialising and re-parsing their JSON cost more than the
 * decisions themselves and held up the process's one JavaScript thread, which also runs the relay.
 * They are written by the outbox's own INSERT (`insertOutboxRows`), with UUIDv7 event ids made in SQL.
 * The payload is the proto3 JSON of coursemesh.events.v1.EnrollmentDecided (the events test reads it
 * back with `EnrollmentDecided.fromJSON` and compares it with `toJSON`).
 */
export async function decideBatch(tx: Tx, courseIds: readonly string[], options: DecideOptions): Promise<DecidedBatch> {
  const rows = await tx`
    with clock as materialized (
      select now, now - make_interval(secs => ${options.holdMs}::int / 1000.0) as eligible_until,
        to_char(now at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as occurred_at,
        ${eventIdPrefixSql(tx, tx`now`)} as id_prefix
      from (select clock_timestamp() as now) t
    ),
    course as materialized (
      select c.id, c.capacity, c.seats_taken, c.waitlist_length, c.version, c.capacity - c.seats_taken as free_seats,
        to_json(c.code)::text as code_json, to_json(c.title)::text as title_json
      from courses c
      where c.id = any(${courseIds as string[]}::uuid[])
        and c.id = any(string_to_array(nullif(current_setting(${LOCKED_SETTING}, true), ''), ',')::uuid[])
    ),
    -- Each course's facts as parallel arrays: looked up by position later instead of joined, since a
      -- join's plan would depend on the planner's guess of the batch's size.
    facts as materialized (
      select array_agg(c.id) as ids, array_agg(c.code_json) as codes, array_agg(c.title_json) as titles,
        array_agg(c.capacity) as capacities, array_agg(c.seats_taken) as seats, array_agg(c.waitlist_length) as waitlists,
        array_agg(c.version) as versions
      from course c
    ),
    batch as (
      select b.*, c.free_seats from course c
      cross join lateral (
        select r.ctid as row_ref, r.id, r.course_id, r.student_id, r.score
        from requests r
        where r.course_id = c.id and r.status = 'PENDING' and r.score <= (select eligible_until from clock)
        order by r.score, r.id
        limit ${options.limit}
      ) b
    ),
    flagged as (
      select b.*, row_number() over (partition by b.course_id, b.student_id order by b.score, b.id) as nth_of_student, live.status as live_status
      from batch b
      -- Lateral: one index probe per request, whatever the planner thinks the batch's size is.
      left join lateral (
        select l.status from requests l
        where l.course_id = b.course_id and l.student_id = b.student_id and l.status in ('ENROLLED', 'WAITLISTED')
        limit 1
      ) live on true
    ),
    ranked as (
      select f.*, (f.nth_of_student = 1 and f.live_status is null) as contends,
        count(*) filter (where f.nth_of_student = 1 and f.live_status is null) over (partition by f.course_id order by f.score, f.id) as seat_rank
      from flagged f
    ),
    decided as materialized (
      select r.row_ref,
        case when not r.contends then 'REJECTED' when r.seat_rank <= r.free_seats then 'ENROLLED' else 'WAITLISTED' end as status,
        case when r.live_status = 'ENROLLED' then 'ALREADY_ENROLLED'
             when r.live_status = 'WAITLISTED' then 'ALREADY_WAITLISTED'
             when not r.contends then 'ALREADY_PENDING'
             when r.seat_rank <= r.free_seats then ''
             else 'COURSE_FULL' end as reason
      from ranked r
    ),
    -- One UPDATE per outcome, each finding its rows by address (the course locks keep them still):
    -- a TID scan of exactly those rows and constant new values, so no join between the decisions
    -- and the table — whose plan would hang on the planner's guess of the batch's size (a nested
    -- loop over thousands of rows when it guessed dozens). The guard is "still undecided" as
    -- decided_at (the same thing, by constraint): status = 'PENDING' would invite a scan of every
    -- pending request through its partial index instead.
    enrolled as (
      update requests r set status = 'ENROLLED', reason = '', decided_at = k.now, updated_at = k.now, enrolled_at = k.now
      from clock k
      where r.ctid = any(array(select row_ref from decided where status = 'ENROLLED')) and r.decided_at is null
      returning r.id, r.course_id, r.student_id, r.score, r.status, r.reason, r.created_at, r.decided_at, r.traceparent
    ),
    waitlisted as (
      update requests r set status = 'WAITLISTED', reason = 'COURSE_FULL', decided_at = k.now, updated_at = k.now
      from clock k
      where r.ctid = any(array(select row_ref from decided where status = 'WAITLISTED')) and r.decided_at is null
      returning r.id, r.course_id, r.student_id, r.score, r.status, r.reason, r.created_at, r.decided_at, r.traceparent
    ),
    rejected_enrolled as (
      update requests r set status = 'REJECTED', reason = 'ALREADY_ENROLLED', decided_at = k.now, updated_at = k.now
      from clock k
      where r.ctid = any(array(select row_ref from decided where reason = 'ALREADY_ENROLLED')) and r.decided_at is null
      returning r.id, r.course_id, r.student_id, r.score, r.status, r.reason, r.created_at, r.decided_at, r.traceparent
    ),
    rejected_waitlisted as (
      update requests r set status = 'REJECTED', reason = 'ALREADY_WAITLISTED', decided_at = k.now, updated_at = k.now
      from clock k
      where r.ctid = any(array(select row_ref from decided where reason = 'ALREADY_WAITLISTED')) and r.decided_at is null
      returning r.id, r.course_id, r.student_id, r.score, r.status, r.reason, r.created_at, r.decided_at, r.traceparent
    ),
    rejected_pending as (
      update requests r set status = 'REJECTED', reason = 'ALREADY_PENDING', decided_at = k.now, updated_at = k.now
      from clock k
      where r.ctid = any(array(select row_ref from decided where reason = 'ALREADY_PENDING')) and r.decided_at is null
      returning r.id, r.course_id, r.student_id, r.score, r.status, r.reason, r.created_at, r.decided_at, r.traceparent
    ),
    updated as (
      select * from enrolled
      union all select * from waitlisted
      union all select * from rejected_enrolled
      union all select * from rejected_waitlisted
      union all select * from rejected_pending
    ),
    numbered as (
      select u.*, row_number() over w as n,
        count(*) filter (where u.status = 'ENROLLED') over w as enrolled_so_far,
        count(*) filter (where u.status = 'WAITLISTED') over w as waitlisted_so_far
      from updated u
      window w as (partition by u.course_id order by u.score, u.id)
    ),
    -- Earlier waiters ranked after a course's first newcomer: ones a boosted newcomer overtakes.
    -- The snapshot predates this statement, so the newcomers themselves are not among them; the
    -- range is usually empty (later arrivals rank last).
    earlier as materialized (
      select w.* from (
        select distinct on (x.course_id) x.course_id, x.score, x.id from numbered x
        where x.status = 'WAITLISTED' order by x.course_id, x.score, x.id
      ) f
      cross join lateral (
        select w.course_id, w.score, w.id from requests w
        where w.course_id = f.course_id and w.status = 'WAITLISTED' and (w.score, w.id) > (f.score, f.id)
        offset 0 -- a per-course index scan; flattened into a join it would read every course's waitlist
      ) w
    ),
    -- Places on the waitlist: after everyone who waited before, less the earlier waiters a
    -- newcomer overtakes, counted in one window over both sets (no join between them).
    positioned as (
      select m.*,
        case when m.status = 'WAITLISTED' then m.waitlisted_so_far
          - (count(*) filter (where m.is_earlier) over (partition by m.course_id)
             - count(*) filter (where m.is_earlier) over (partition by m.course_id order by m.score, m.id)) end as waitlist_rank
      from (
        select x.id, x.course_id, x.student_id, x.score, x.status, x.reason, x.n, x.enrolled_so_far, x.waitlisted_so_far, false as is_earlier
        from numbered x
        union all
        select e.id, e.course_id, null, e.score, null, null, null, null, null, true from earlier e
      ) m
    ),
    events as (${insertOutboxRows(
      tx,
      tx`
        select e.event_id, 'enrollment.decided.' || e.course_id as subject, ${EVENT_DECIDED}::text as event_type, e.course_id::text as aggregate_id,
          -- Ids need to rise with the version only within a course: ordering by the rank alone does that
          -- and sorts on one bigint rather than a pair.
          e.version as aggregate_version, e.n as position,
          -- Concatenated, then parsed once: cheaper than jsonb_build_object for thousands of rows.
          -- Strings that could need escaping go through JSON encoding (to_json).
          '{"eventId":"' || e.event_id || '","occurredAt":"' || k.occurred_at || '","courseId":"' || e.course_id
            || '","aggregateVersion":' || e.version || ',"courseCode":' || f.codes[e.ci] || ',"courseTitle":' || f.titles[e.ci]
            || ',"requestId":"' || e.id || '","studentId":' || to_json(e.student_id)::text
            || ',"status":"ENROLLMENT_STATUS_' || e.status || '"'
            || case when e.reason <> '' then ',"reason":"' || e.reason || '"' else '' end
            || case when e.waitlist_rank is not null then ',"waitlistPosition":' || (f.waitlists[e.ci] + e.waitlist_rank) else '' end
            || ',"seatsTaken":' || (f.seats[e.ci] + e.enrolled_so_far) || ',"capacity":' || f.capacities[e.ci] || '}' as payload
        from (
          select p.*, i.ci, f.versions[i.ci] + p.n as version, ${eventIdSql(tx, tx`k.id_prefix`)} as event_id
          from positioned p, facts f, clock k, lateral (select array_position(f.ids, p.course_id) as ci) i
          where not p.is_earlier
        ) e, facts f, clock k`,
      { traceparent: options.traceparent, tracestate: options.tracestate },
    )}),
    counters as (
      update courses c
      set seats_taken = c.seats_taken + d.enrolled, waitlist_length = c.waitlist_length + d.waitlisted,
          version = c.version + d.decided, updated_at = (select now from clock)
      from (
        select course_id, count(*) filter (where status = 'ENROLLED') as enrolled,
          count(*) filter (where status = 'WAITLISTED') as waitlisted, count(*) as decided
        from updated group by course_id
      ) d
      where c.id = d.course_id
    )
    -- Only what the caller needs, in forms that parse fast: a batch returns thousands of rows.
    select u.id, u.course_id, u.status,
      extract(epoch from u.decided_at - u.created_at)::float8 * 1000 as waited_ms,
      case when ${options.withTraceparents}::boolean then u.traceparent end as traceparent,
      case when u.n = 1 then u.decided_at end as batch_time
    from numbered u`;
  const first = rows.find((row) => row.batch_time);
  return {
    decidedAt: (first?.batch_time as Date | undefined) ?? new Date(),
    requests: rows.map((row) => ({ id: row.id, courseId: row.course_id, status: row.status, waitedMs: row.waited_ms, traceparent: row.traceparent })),
  };
}

/**
 * Per course, milliseconds until its first undecided request becomes eligible under the hold (0
 * when one is eligible now); courses with nothing pending are left out.
 */
export async function msUntilEligible(db: Db, courseIds: readonly string[], holdMs: number): Promise<Map<string, number>> {
  const rows = await db`
    select c.id, greatest(0, extract(epoch from (first.score + make_interval(secs => ${holdMs}::int / 1000.0) - clock_timestamp())) * 1000)::float8 as ms
    from unnest(${courseIds as string[]}::uuid[]) as c(id)
    cross join lateral (
      select r.score from requests r where r.course_id = c.id and r.status = 'PENDING' order by r.score, r.id limit 1
    ) first`;
  return new Map(rows.map((row) => [row.id as string, row.ms as number]));
}

/** Courses with undecided requests (the safety net's and start-up's view of the work). */
export async function selectCoursesWithPending(db: Db): Promise<string[]> {
  const rows = await db`
    select c.id from courses c
    where exists (select 1 from requests r where r.course_id = c.id and r.status = 'PENDING')`;
  return rows.map((row) => row.id as string);
}

// ---------------------------------------------------------------------------------------------
// Waitlist: promotion and drops

export interface PromotedRequest {
  id: string;
  studentId: string;
  enrolledAt: Date;
}

/** Moves the first `count` waitlisted requests of a locked course to ENROLLED, in score order. */
export async function promoteWaitlistHeads(tx: Tx, courseId: string, count: number): Promise<PromotedRequest[]> {
  if (count <= 0) return [];
  const rows = await tx`
    with heads as (
      select id, score from requests
      where course_id = ${courseId} and status = 'WAITLISTED'
      order by score, id limit ${count}
    ),
    clock as (select clock_timestamp() as now),
    promoted as (
      update requests r
      set status = 'ENROLLED', reason = '', enrolled_at = k.now, updated_at = k.now
      from heads h, clock k
      where r.id = h.id
      returning r.id, r.student_id, r.enrolled_at, r.score
    )
    select p.id, p.student_id, p.enrolled_at from promoted p order by p.score, p.id`;
  return rows
    .map((row) => ({ id: row.id, studentId: row.student_id, enrolledAt: row.enrolled_at }));
}

/** Marks a live request DROPPED; returns when. */
export async function markDropped(tx: Tx, requestId: string): Promise<Date> {
  const [row] = await tx`
    update requests set status = 'DROPPED', reason = '', dropped_at = clock_timestamp(), updated_at = clock_timestamp()
    where id = ${requestId} and status in ('ENROLLED', 'WAITLISTED')
    returning dropped_at`;
  return row!.dropped_at;
}

export interface DropRecord {
  idempotencyKey: string;
  requestId: string;
  courseId: string;
  studentId: string;
  previousStatus: "ENROLLED" | "WAITLISTED";
  promotedRequestId: string | null;
  promotedStudentId: string | null;
  droppedAt: Date;
}

function toDrop(row: Row): DropRecord {
  return {
    idempotencyKey: row.idempotency_key,
    requestId: row.request_id,
    courseId: row.course_id,
    studentId: row.student_id,
    previousStatus: row.previous_status,
    promotedRequestId: row.promoted_request_id,
    promotedStudentId: row.promoted_student_id,
    droppedAt: row.dropped_at,
  };
}

/** The stored answer of a drop with this idempotency key, or null. */
export async function selectDrop(db: Db, idempotencyKey: string): Promise<DropRecord | null> {
  const [row] = await db`select * from drops where idempotency_key = ${idempotencyKey}`;
  return row ? toDrop(row) : null;
}

/** Stores a drop's answer under its idempotency key. */
export async function insertDrop(tx: Tx, drop: DropRecord): Promise<void> {
  await tx`
    insert into drops (idempotency_key, request_id, course_id, student_id, previous_status, promoted_request_id, promoted_student_id, dropped_at)
    values (${drop.idempotencyKey}, ${drop.requestId}, ${drop.courseId}, ${drop.studentId}, ${drop.previousStatus},
            ${drop.promotedRequestId}, ${drop.promotedStudentId}, ${drop.droppedAt})`;
}

// ---------------------------------------------------------------------------------------------
// Observability

/** Per-course gauges for /metrics: queue depth, seats taken, capacity. */
export async function selectCourseGauges(db: Db): Promise<{ courseId: string; pending: number; seatsTaken: number; capacity: number }[]> {
  const rows = await db`
    select c.id, c.seats_taken, c.capacity, coalesce(p.n, 0)::int as pending
    from courses c
    left join (select course_id, count(*) as n from requests where status = 'PENDING' group by course_id) p on p.course_id = c.id`;
  return rows.map((row) => ({ courseId: row.id, pending: row.pending, seatsTaken: row.seats_taken, capacity: row.capacity }));
}
