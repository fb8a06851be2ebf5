-- The change notification also says the job's status ("<id> <status>"), so a worker learns that
-- its own progress writes need no second look, and only looks again when a job left PROCESSING.
create or replace function notify_job_changed() returns trigger language plpgsql as $$
begin
  if tg_op = 'UPDATE' and new.updated_at = old.updated_at then
    return null;
  end if;
  perform pg_notify('ingest_job_changed', new.id::text || ' ' || new.status);
  return null;
end
$$;
