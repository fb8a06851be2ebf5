-- Who hears about what. Recipients (email addresses, webhook URLs) live only here: events carry
-- ids, never addresses.
create table subscriptions (
  id uuid primary key,
  owner text not null,
  channel text not null check (channel in ('EMAIL', 'WEBHOOK')),
  -- Email addresses are stored lower-cased, webhook URLs as the URL parser normalised them.
  address text not null check (length(address) between 3 and 2048),
  filter_kind text not null check (filter_kind in ('monitor', 'course', 'student', 'job')),
  filter_value text not null check (length(filter_value) between 1 and 256),
  status text not null check (status in ('PENDING', 'ACTIVE')),
  -- Webhook signing key (Standard Webhooks); null for email.
  secret text,
  -- Double opt-in: only a hash of the emailed token is kept.
  confirm_token_hash text unique,
  confirm_expires_at timestamptz,
  -- Capability behind the unsubscribe link in every email (RFC 8058 one-click).
  unsubscribe_token text not null unique,
  created_at timestamptz not null default now(),
  confirmed_at timestamptz,
  check ((status = 'ACTIVE') = (confirmed_at is not null)),
  check ((channel = 'WEBHOOK') = (secret is not null)),
  -- Subscribe is idempotent on channel + address + filter, per owner.
  unique (owner, channel, address, filter_kind, filter_value)
);
-- Fan-out: the active subscriptions of one filter target.
create index subscriptions_target on subscriptions (filter_kind, filter_value) where status = 'ACTIVE';
create index subscriptions_by_owner on subscriptions (owner, id desc);

-- One notification to one recipient, the unit the sender loop works on and the history users read.
create table deliveries (
  id uuid primary key,
  -- The event it is about; null for test and confirmation emails.
  event_id text,
  event_type text not null,
  subscription_id uuid references subscriptions (id) on delete set null,
  -- Whose history it is: the subscription's owner (or SendTest's caller).
  owner text not null,
  channel text not null check (channel in ('EMAIL', 'WEBHOOK')),
  recipient text not null,
  monitor_id text,
  course_id text,
  student_id text,
  job_id text,
  aggregate_version bigint,
  subject text not null,
  -- What the message is rendered from (the event's proto3 JSON plus context); rendering at send
  -- time keeps coalescing a matter of replacing the payload.
  payload jsonb not null,
  status text not null default 'PENDING' check (status in ('PENDING', 'SENT', 'FAILED', 'COALESCED', 'SUPPRESSED')),
  attempts int not null default 0 check (attempts >= 0),
  last_error text,
  -- Due time while PENDING (the first send, a retry, or the end of a coalescing window).
  next_attempt_at timestamptz,
  created_at timestamptz not null default now(),
  sent_at timestamptz,
  -- Seat emails of one monitor to one recipient share a key; the window runs per key.
  coalesce_key text,
  -- The delivery this one was merged into (status COALESCED).
  coalesced_into uuid,
  traceparent text,
  check ((status = 'PENDING') = (next_attempt_at is not null)),
  check ((status = 'SENT') = (sent_at is not null))
);
-- Unique per event, channel and recipient: a redelivered event, or two subscriptions of the same
-- recipient, never make a second message.
create unique index deliveries_once on deliveries (event_id, channel, recipient) where event_id is not null;
create index deliveries_due on deliveries (next_attempt_at) where status = 'PENDING';
create index deliveries_recipient_sent on deliveries (recipient, sent_at) where status = 'SENT';
create index deliveries_coalesce on deliveries (coalesce_key, created_at desc) where coalesce_key is not null;
create index deliveries_by_owner on deliveries (owner, id desc);
create index deliveries_by_subscription on deliveries (subscription_id) where status = 'PENDING';
