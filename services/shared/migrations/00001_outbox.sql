-- The transactional outbox (DESIGN.md §Events): a state change and its event commit in one
-- transaction; the service's relay publishes rows to JetStream in id order and deletes each row
-- once JetStream has acknowledged it, so the table holds only what is still on its way.
--
-- The identity keeps the default CACHE 1 on purpose: values are then handed out in time order
-- across sessions, so the events of one aggregate (whose writers lock the aggregate's row before
-- enqueueing) get ids in commit order, which is the order the relay publishes them in.
create table outbox (
  id bigint generated always as identity primary key,
  event_id uuid not null,
  -- Without the deployment's NATS prefix, e.g. seats.changed.<monitor_id>.
  subject text not null,
  -- The message's full name, e.g. coursemesh.events.v1.SeatsChanged.
  event_type text not null,
  aggregate_id text,
  aggregate_version bigint,
  -- The proto3-JSON body.
  payload jsonb not null,
  -- The trace of the transaction that wrote the row, so the publish (even after a relay restart)
  -- continues it.
  traceparent text,
  tracestate text,
  created_at timestamptz not null default now()
)
-- A queue table: rows live for milliseconds, so vacuum it by dead-row count, not by table size.
with (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_scale_factor = 0);
