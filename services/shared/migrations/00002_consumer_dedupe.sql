-- What each durable consumer has applied (DESIGN.md §Events). A consumer writes these rows in the
-- same transaction as its own changes and acks only after that commits, so a redelivery (after a
-- crash between commit and ack, or beyond JetStream's finite duplicate window) has no effect.
create table consumed_events (
  consumer text not null,
  event_id uuid not null,
  consumed_at timestamptz not null default now(),
  primary key (consumer, event_id)
);

-- Pruning walks rows by age, per consumer.
create index consumed_events_by_age on consumed_events (consumer, consumed_at);

-- The last aggregate_version each consumer applied per aggregate; an event at or below it is
-- stale (or a repeat) and is acked without running the handler. The row lock taken by the upsert
-- also serialises handlers of one aggregate across consumer replicas.
create table consumer_aggregate_versions (
  consumer text not null,
  aggregate_id text not null,
  version bigint not null,
  updated_at timestamptz not null default now(),
  primary key (consumer, aggregate_id)
);
