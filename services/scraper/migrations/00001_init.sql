-- Monitors, their schedule and their history of seat changes (DESIGN.md §Scraping).

create table monitors (
  id uuid primary key,
  -- The creator (the token's `sub`).
  owner text not null,
  url text not null,
  -- host[:port] of url, lowercase: the per-host pool and concurrency cap key.
  host text not null,
  label text not null check (label <> ''),
  interval_seconds integer not null check (interval_seconds > 0),
  -- The validated extractor: {"kind": "beartracks" | "css" | "json", ...}.
  extractor jsonb not null,
  fetch_mode text not null check (fetch_mode in ('BROWSER', 'HTTP')),
  isolation text not null check (isolation in ('HOST', 'MONITOR')),
  -- User intent and observed health never mix.
  mode text not null default 'ACTIVE' check (mode in ('ACTIVE', 'PAUSED', 'STOPPED')),
  health text not null default 'PENDING' check (health in ('PENDING', 'HEALTHY', 'STALE', 'ERROR')),
  -- Seats as last read: {"open"?, "capacity"?, "waitlist"?, "raw", "note"?}; null before the first good check.
  seats jsonb,
  last_checked_at timestamptz,
  last_changed_at timestamptz,
  last_success_at timestamptz,
  last_error text not null default '',
  consecutive_failures integer not null default 0 check (consecutive_failures >= 0),
  -- When the next check is due; set exactly when the monitor is ACTIVE.
  next_check_at timestamptz,
  -- Since when the monitor has been expected to be checked (creation or the last resume): the
  -- sweeper's STALE clock starts at the later of this and last_success_at.
  active_since timestamptz not null default now(),
  -- The lease of the replica checking it; results are written only while the token still holds.
  lease_token uuid,
  lease_until timestamptz,
  lease_owner text,
  -- The aggregate version of events: rises by one per change of mode, health or seats.
  version bigint not null default 1,
  -- Notifier subscriptions made from notify_emails (removed with the monitor).
  subscription_ids text[] not null default '{}',
  -- The trace of the CreateMonitor call; checks link to it.
  traceparent text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint next_check_only_when_active check ((mode = 'ACTIVE') = (next_check_at is not null)),
  constraint lease_complete check ((lease_token is null) = (lease_until is null))
);

-- The schedulers' claim: due ACTIVE monitors in due order.
create index monitors_due on monitors (next_check_at) where mode = 'ACTIVE';
-- ListMonitors, newest first (ids are UUIDv7, so id order is creation order).
create index monitors_owner_id on monitors (owner, id desc);
-- The sweeper's candidates.
create index monitors_sweep on monitors (health) where mode = 'ACTIVE' and health in ('PENDING', 'HEALTHY');

create table seat_changes (
  id uuid primary key,
  monitor_id uuid not null references monitors (id) on delete cascade,
  -- null for the monitor's first reading.
  previous jsonb,
  current jsonb not null,
  -- When the check that saw the change read the page.
  observed_at timestamptz not null,
  -- The monitor's version after this change (= the event's aggregate_version).
  version bigint not null,
  created_at timestamptz not null default now()
);

create index seat_changes_monitor_id on seat_changes (monitor_id, id desc);
