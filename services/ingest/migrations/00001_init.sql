-- Ingest: uploaded PDFs (as content-addressed blobs in the JetStream object store), the jobs that
-- turn them into course outlines, and the outlines.

-- One row per blob in the object store bucket `documents`, named by the SHA-256 of its content.
-- An upload touches the row before it writes the blob, and the sweeper deletes only blobs that no
-- document refers to and nobody touched for a grace period, so it never races an upload.
create table blobs (
  sha256 text primary key check (sha256 ~ '^[0-9a-f]{64}$'),
  size_bytes bigint not null check (size_bytes > 0),
  touched_at timestamptz not null default now()
);

create index blobs_by_touch on blobs (touched_at);

create table jobs (
  id uuid primary key,
  owner text not null,
  course_title text not null check (course_title <> ''),
  -- Empty when the client sent none; unique per owner otherwise.
  idempotency_key text not null default '',
  -- SHA-256 over the title and the files, to tell a retried upload from a different one.
  fingerprint text not null,
  status text not null check (status in ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'CANCELLED')),
  progress integer not null default 0 check (progress between 0 and 100),
  message text not null default '',
  error text not null default '',
  error_reason text not null default '',
  attempts integer not null default 0 check (attempts >= 0),
  -- Bumped by RetryJob: a work item of an older generation is stale.
  generation integer not null default 1,
  -- aggregate_version of the job's events; rises by one per change.
  version bigint not null default 1,
  -- The worker holding the job and until when; a lease that ran out means the worker is gone.
  lease_owner text,
  lease_until timestamptz,
  created_at timestamptz not null default clock_timestamp(),
  updated_at timestamptz not null default clock_timestamp(),
  started_at timestamptz,
  completed_at timestamptz,
  -- The trace of the upload, continued by the processing.
  traceparent text,
  check ((status in ('COMPLETED', 'FAILED', 'CANCELLED')) = (completed_at is not null))
);

create unique index jobs_idempotency on jobs (owner, idempotency_key) where idempotency_key <> '';
-- Ids are UUIDv7, so id order is creation order: ListJobs pages by id, newest first.
create index jobs_by_owner on jobs (owner, id desc);
-- The queue limit counts these; the stale-lease sweep scans the processing ones.
create index jobs_live on jobs (status, lease_until) where status in ('PENDING', 'PROCESSING');

create table documents (
  job_id uuid not null references jobs (id) on delete cascade,
  position integer not null check (position >= 0),
  filename text not null,
  content_type text not null,
  size_bytes bigint not null check (size_bytes > 0),
  sha256 text not null references blobs (sha256),
  page_count integer check (page_count >= 0),
  primary key (job_id, position)
);

create index documents_by_blob on documents (sha256);

create table courses (
  id uuid primary key,
  job_id uuid not null unique references jobs (id) on delete cascade,
  owner text not null,
  title text not null,
  page_count integer not null check (page_count >= 0),
  created_at timestamptz not null default clock_timestamp()
);

create table modules (
  course_id uuid not null references courses (id) on delete cascade,
  position integer not null check (position >= 0),
  title text not null,
  summary text not null,
  key_terms text[] not null,
  start_page integer not null check (start_page >= 1),
  end_page integer not null,
  primary key (course_id, position),
  check (end_page >= start_page)
);

-- WatchJob and running workers learn of a job's changes from any replica through LISTEN. Only
-- changes people can see (updated_at moves) notify; lease renewals do not.
create function notify_job_changed() returns trigger language plpgsql as $$
begin
  if tg_op = 'UPDATE' and new.updated_at = old.updated_at then
    return null;
  end if;
  perform pg_notify('ingest_job_changed', new.id::text);
  return null;
end
$$;

create trigger jobs_changed after insert or update on jobs for each row execute function notify_job_changed();
