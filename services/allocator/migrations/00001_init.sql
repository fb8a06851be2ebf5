-- The allocator's schema: courses with their seat counters, and every enrollment request with its
-- decision. The invariants that matter are constraints, so no bug can break them silently.

create table courses (
  id uuid primary key,
  code text not null,
  title text not null,
  capacity integer not null,
  -- Counters kept under the course row's lock by every transaction that changes a request's status.
  seats_taken integer not null default 0,
  waitlist_length integer not null default 0,
  -- The aggregate_version of the course's events: one more per event.
  version bigint not null default 0,
  created_at timestamptz not null default clock_timestamp(),
  updated_at timestamptz not null default clock_timestamp(),
  constraint courses_code_unique unique (code),
  constraint courses_capacity_not_negative check (capacity >= 0),
  constraint courses_seats_within_capacity check (seats_taken between 0 and capacity),
  constraint courses_waitlist_not_negative check (waitlist_length >= 0)
);

create table requests (
  id uuid primary key,
  idempotency_key text not null,
  course_id uuid not null references courses (id),
  student_id text not null,
  priority smallint not null,
  status text not null default 'PENDING',
  -- Machine-readable reason of the decision (an ErrorReason name), '' when there is none.
  reason text not null default '',
  -- Arrival: the database's clock_timestamp() at accept, one clock for every replica.
  created_at timestamptz not null,
  -- Fairness order: arrival - priority x ALLOCATOR_PRIORITY_STEP_MS, fixed at accept.
  score timestamptz not null,
  decided_at timestamptz,
  enrolled_at timestamptz,
  dropped_at timestamptz,
  updated_at timestamptz not null,
  -- W3C trace context of the Enroll call, so the batch that decides it links back to it.
  traceparent text,
  constraint requests_idempotency_key_unique unique (idempotency_key),
  constraint requests_idempotency_key_length check (char_length(idempotency_key) between 1 and 128),
  constraint requests_priority_range check (priority between 0 and 100),
  constraint requests_status_known check (status in ('PENDING', 'ENROLLED', 'WAITLISTED', 'REJECTED', 'DROPPED')),
  constraint requests_decided_once check ((status = 'PENDING') = (decided_at is null)),
  constraint requests_enrolled_has_time check (status <> 'ENROLLED' or enrolled_at is not null),
  constraint requests_dropped_has_time check ((status = 'DROPPED') = (dropped_at is not null))
);

-- The allocation queue of a course, in fairness order.
create index requests_pending_by_score on requests (course_id, score, id) where status = 'PENDING';
-- The waitlist of a course, in fairness order (its head is promoted first).
create index requests_waitlist_by_score on requests (course_id, score, id) where status = 'WAITLISTED';
-- Seat holders in the order they got their seat (ListEnrollments).
create index requests_enrolled_in_order on requests (course_id, enrolled_at, id) where status = 'ENROLLED';
-- One live enrollment (a seat or a waitlist place) per student and course.
create unique index requests_one_live_per_student on requests (course_id, student_id) where status in ('ENROLLED', 'WAITLISTED');

-- Drop is idempotent on its own key: a retry returns the stored answer.
create table drops (
  idempotency_key text primary key,
  request_id uuid not null references requests (id),
  course_id uuid not null references courses (id),
  student_id text not null,
  previous_status text not null,
  promoted_request_id uuid references requests (id),
  promoted_student_id text,
  dropped_at timestamptz not null,
  constraint drops_idempotency_key_length check (char_length(idempotency_key) between 1 and 128),
  constraint drops_previous_status_live check (previous_status in ('ENROLLED', 'WAITLISTED'))
);
