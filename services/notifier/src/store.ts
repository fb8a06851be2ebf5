/** The notifier's SQL: named queries over `subscriptions` and `deliveries`. */
import type { Sql, Tx } from "@coursemesh/shared/db";
import type { ChannelName, FilterKind, Target } from "./recipients.ts";

type Db = Sql | Tx;

export type SubscriptionStatusName = "PENDING" | "ACTIVE";
export type DeliveryStatusName = "PENDING" | "SENT" | "FAILED" | "COALESCED" | "SUPPRESSED";

export interface SubscriptionRow {
  id: string;
  owner: string;
  channel: ChannelName;
  address: string;
  filter_kind: FilterKind;
  filter_value: string;
  status: SubscriptionStatusName;
  secret: string | null;
  confirm_token_hash: string | null;
  confirm_expires_at: Date | null;
  unsubscribe_token: string;
  created_at: Date;
  confirmed_at: Date | null;
}

export interface NewSubscription {
  id: string;
  owner: string;
  channel: ChannelName;
  address: string;
  target: Target;
  active: boolean;
  secret: string | null;
  confirmTokenHash: string | null;
  confirmExpiresAt: Date | null;
  unsubscribeToken: string;
}

/** Inserts a subscription unless the owner already has the same channel, address and filter; returns the row or undefined. */
export async function insertSubscription(db: Db, s: NewSubscription): Promise<SubscriptionRow | undefined> {
  const [row] = await db<SubscriptionRow[]>`
    insert into subscriptions (id, owner, channel, address, filter_kind, filter_value, status, secret,
                               confirm_token_hash, confirm_expires_at, unsubscribe_token, confirmed_at)
    values (${s.id}, ${s.owner}, ${s.channel}, ${s.address}, ${s.target.kind}, ${s.target.value},
            ${s.active ? "ACTIVE" : "PENDING"}, ${s.secret}, ${s.confirmTokenHash}, ${s.confirmExpiresAt},
            ${s.unsubscribeToken}, ${s.active ? new Date() : null})
    on conflict (owner, channel, address, filter_kind, filter_value) do nothing
    returning *`;
  return row;
}

/** The owner's subscription with this channel, address and filter, locked for update. */
export async function findSubscriptionForUpdate(db: Db, owner: string, channel: ChannelName, address: string, target: Target): Promise<SubscriptionRow | undefined> {
  const [row] = await db<SubscriptionRow[]>`
    select * from subscriptions
    where owner = ${owner} and channel = ${channel} and address = ${address}
      and filter_kind = ${target.kind} and filter_value = ${target.value}
    for update`;
  return row;
}

/** One subscription by id. */
export async function getSubscription(db: Db, id: string): Promise<SubscriptionRow | undefined> {
  const [row] = await db<SubscriptionRow[]>`select * from subscriptions where id = ${id}`;
  return row;
}

/** Replaces the confirmation token of a PENDING subscription (the old link stops working). */
export async function replaceConfirmToken(db: Db, id: string, tokenHash: string, expiresAt: Date): Promise<SubscriptionRow> {
  const [row] = await db<SubscriptionRow[]>`
    update subscriptions set confirm_token_hash = ${tokenHash}, confirm_expires_at = ${expiresAt}
    where id = ${id} returning *`;
  return row!;
}

/** The subscription a confirmation token belongs to, locked for update. */
export async function findByConfirmToken(db: Db, tokenHash: string): Promise<SubscriptionRow | undefined> {
  const [row] = await db<SubscriptionRow[]>`select * from subscriptions where confirm_token_hash = ${tokenHash} for update`;
  return row;
}

/** Makes a subscription ACTIVE; the token keeps working (a second click is a no-op) until it expires. */
export async function activateSubscription(db: Db, id: string): Promise<SubscriptionRow> {
  const [row] = await db<SubscriptionRow[]>`
    update subscriptions set status = 'ACTIVE', confirmed_at = coalesce(confirmed_at, now())
    where id = ${id} returning *`;
  return row!;
}

/** The subscription an unsubscribe link names. */
export async function findByUnsubscribeToken(db: Db, token: string): Promise<SubscriptionRow | undefined> {
  const [row] = await db<SubscriptionRow[]>`select * from subscriptions where unsubscribe_token = ${token}`;
  return row;
}

/** Deletes a subscription and suppresses its notifications that were not sent yet. */
export async function deleteSubscription(tx: Tx, id: string): Promise<boolean> {
  await tx`
    update deliveries set status = 'SUPPRESSED', next_attempt_at = null, last_error = 'unsubscribed before it was sent'
    where subscription_id = ${id} and status = 'PENDING'`;
  const deleted = await tx`delete from subscriptions where id = ${id}`;
  return deleted.count > 0;
}

export interface SubscriptionQuery {
  /** Only this owner's; undefined lists everyone's (operators). */
  owner?: string;
  channel?: ChannelName;
  target?: Partial<Target> & { kind: FilterKind };
  /** Keyset: ids below this one (newest first). */
  beforeId?: string;
  limit: number;
}

/** A page of subscriptions, newest first (ids are UUIDv7, so id order is creation order). */
export async function listSubscriptions(db: Db, q: SubscriptionQuery): Promise<SubscriptionRow[]> {
  return db<SubscriptionRow[]>`
    select * from subscriptions
    where true
      ${q.owner !== undefined ? db`and owner = ${q.owner}` : db``}
      ${q.channel ? db`and channel = ${q.channel}` : db``}
      ${q.target ? db`and filter_kind = ${q.target.kind}` : db``}
      ${q.target?.value ? db`and filter_value = ${q.target.value}` : db``}
      ${q.beforeId ? db`and id < ${q.beforeId}` : db``}
    order by id desc
    limit ${q.limit}`;
}

/** Whether the owner has an ACTIVE email subscription to this address (SendTest may mail it). */
export async function hasActiveEmailSubscription(db: Db, owner: string, address: string): Promise<boolean> {
  const [row] = await db`
    select 1 from subscriptions where owner = ${owner} and channel = 'EMAIL' and address = ${address} and status = 'ACTIVE' limit 1`;
  return Boolean(row);
}

/** Signing secrets of webhook subscriptions, by id. */
export async function webhookSecrets(db: Db, ids: string[]): Promise<Map<string, string>> {
  if (ids.length === 0) return new Map();
  const rows = await db<{ id: string; secret: string }[]>`
    select id, secret from subscriptions where id = any(${ids}::uuid[]) and secret is not null`;
  return new Map(rows.map((r) => [r.id, r.secret]));
}

/** The owner's newest webhook subscription to this URL (a test webhook is signed with its secret). */
export async function webhookSubscriptionOf(db: Db, owner: string, url: string): Promise<string | null> {
  const [row] = await db<{ id: string }[]>`
    select id from subscriptions where owner = ${owner} and channel = 'WEBHOOK' and address = ${url} order by id desc limit 1`;
  return row?.id ?? null;
}

/** ACTIVE subscriptions listening to any of the targets, in a stable order for fan-out. */
export async function activeSubscriptionsFor(db: Db, targets: Target[]): Promise<SubscriptionRow[]> {
  if (targets.length === 0) return [];
  const kinds = targets.map((t) => t.kind);
  const values = targets.map((t) => t.value);
  return db<SubscriptionRow[]>`
    select s.* from subscriptions s
    join unnest(${kinds}::text[], ${values}::text[]) as t(kind, value) on s.filter_kind = t.kind and s.filter_value = t.value
    where s.status = 'ACTIVE'
    order by s.id`;
}

export interface DeliveryRow {
  id: string;
  event_id: string | null;
  event_type: string;
  subscription_id: string | null;
  owner: string;
  channel: ChannelName;
  recipient: string;
  monitor_id: string | null;
  course_id: string | null;
  student_id: string | null;
  job_id: string | null;
  aggregate_version: string | null;
  subject: string;
  payload: Record<string, unknown>;
  status: DeliveryStatusName;
  attempts: number;
  last_error: string | null;
  next_attempt_at: Date | null;
  created_at: Date;
  sent_at: Date | null;
  coalesce_key: string | null;
  coalesced_into: string | null;
  traceparent: string | null;
}

export interface NewDelivery {
  id: string;
  eventId: string | null;
  eventType: string;
  subscriptionId: string | null;
  owner: string;
  channel: ChannelName;
  recipient: string;
  monitorId?: string | null;
  courseId?: string | null;
  studentId?: string | null;
  jobId?: string | null;
  aggregateVersion?: number | null;
  subject: string;
  payload: Record<string, unknown>;
  nextAttemptAt: Date;
  coalesceKey?: string | null;
  traceparent?: string | null;
  /** Written as decided already (e.g. SUPPRESSED); PENDING by default. */
  status?: "PENDING" | "SUPPRESSED";
  lastError?: string | null;
}

/** Inserts a delivery unless one exists for the same event, channel and recipient; returns whether it was new. */
export async function insertDelivery(db: Db, d: NewDelivery): Promise<boolean> {
  const rows = await db`
    insert into deliveries (id, event_id, event_type, subscription_id, owner, channel, recipient, monitor_id, course_id,
                            student_id, job_id, aggregate_version, subject, payload, status, last_error, next_attempt_at,
                            coalesce_key, traceparent)
    values (${d.id}, ${d.eventId}, ${d.eventType}, ${d.subscriptionId}, ${d.owner}, ${d.channel}, ${d.recipient},
            ${d.monitorId ?? null}, ${d.courseId ?? null}, ${d.studentId ?? null}, ${d.jobId ?? null}, ${d.aggregateVersion ?? null},
            ${d.subject}, ${db.json(d.payload as never)}, ${d.status ?? "PENDING"}, ${d.lastError ?? null},
            ${d.status === "SUPPRESSED" ? null : d.nextAttemptAt}, ${d.coalesceKey ?? null}, ${d.traceparent ?? null})
    on conflict (event_id, channel, recipient) where event_id is not null do nothing
    returning id`;
  return rows.length > 0;
}

/** What an event is about: the subscription targets it reaches and the ids kept with its deliveries. */
export interface EventFacts {
  targets: Target[];
  monitorId?: string;
  courseId?: string;
  studentId?: string;
  jobId?: string;
  aggregateVersion?: number;
}

export interface EventDeliveries extends EventFacts {
  eventId: string;
  eventType: string;
  /** The event's proto3 JSON. */
  event: Record<string, unknown>;
  /** Subjects for the two voices: a student's own subscription, and everyone else's. */
  subjects: { student: string; other: string };
  traceparent: string | null;
}

/** A delivery the fan-out wrote: which event it is for and its channel. */
export interface WrittenDelivery {
  event_id: string;
  channel: ChannelName;
}

/**
 * Fan-out of a batch of events in one statement: per event, one delivery per (channel, address)
 * among the ACTIVE subscriptions of its targets, a student's own subscription deciding the voice;
 * a redelivered event adds nothing. `unsubscribeBase` is the unsubscribe link without its token
 * (the subscription's is appended). The payload is `{event, perspective, unsubscribe_url}`, as
 * fanout.ts writes it for coalesced seat emails.
 */
export async function insertEventDeliveries(tx: Tx, events: EventDeliveries[], unsubscribeBase: string): Promise<WrittenDelivery[]> {
  // Targets flattened, each with the (1-based) position of its event.
  const targets = events.flatMap((e, i) => e.targets.map((t) => ({ n: i + 1, kind: t.kind, value: t.value })));
  if (targets.length === 0) return [];
  type Scalar = "eventId" | "eventType" | "monitorId" | "courseId" | "studentId" | "jobId" | "aggregateVersion" | "traceparent";
  const column = (key: Scalar) => events.map((e) => e[key] ?? null);
  return tx<WrittenDelivery[]>`
    with events as (
      select * from unnest(${column("eventId")}::text[], ${column("eventType")}::text[], ${column("monitorId")}::text[],
                           ${column("courseId")}::text[], ${column("studentId")}::text[], ${column("jobId")}::text[],
                           ${column("aggregateVersion")}::bigint[], ${events.map((e) => e.subjects.student)}::text[],
                           ${events.map((e) => e.subjects.other)}::text[], ${events.map((e) => JSON.stringify(e.event))}::text[],
                           ${column("traceparent")}::text[])
        with ordinality as e(event_id, event_type, monitor_id, course_id, student_id, job_id, aggregate_version,
                             student_subject, other_subject, body, traceparent, n)
    ),
    matched as (
      select distinct on (t.n, s.channel, s.address) t.n, s.id, s.owner, s.channel, s.address, s.filter_kind, s.unsubscribe_token
      from unnest(${targets.map((t) => t.n)}::int[], ${targets.map((t) => t.kind)}::text[], ${targets.map((t) => t.value)}::text[]) as t(n, kind, value)
      join subscriptions s on s.filter_kind = t.kind and s.filter_value = t.value
      where s.status = 'ACTIVE'
      order by t.n, s.channel, s.address, (s.filter_kind = 'student') desc, s.id
    )
    insert into deliveries (id, event_id, event_type, subscription_id, owner, channel, recipient, monitor_id, course_id,
                            student_id, job_id, aggregate_version, subject, payload, next_attempt_at, traceparent)
    select uuid_v7(), e.event_id, e.event_type, m.id, m.owner, m.channel, m.address,
           e.monitor_id, e.course_id, e.student_id, e.job_id, e.aggregate_version,
           case when m.filter_kind = 'student' then e.student_subject else e.other_subject end,
           jsonb_build_object('event', e.body::jsonb,
                              'perspective', case when m.filter_kind = 'student' then 'student' else 'course' end,
                              'unsubscribe_url', ${unsubscribeBase} || m.unsubscribe_token),
           now(), e.traceparent
    from matched m join events e using (n)
    order by m.n, m.channel, m.address
    on conflict (event_id, channel, recipient) where event_id is not null do nothing
    returning event_id, channel`;
}

/**
 * The most recent seat email of a coalescing key that was sent or may still be: merged and
 * suppressed ones never reached the recipient, so the window runs from the last real one. `busy`
 * says a sender holds it right now (it counts as sent just now).
 */
export async function latestCoalescible(tx: Tx, key: string): Promise<{ row: DeliveryRow | undefined; busy: boolean }> {
  const [latest] = await tx<DeliveryRow[]>`
    select * from deliveries where coalesce_key = ${key} and status not in ('COALESCED', 'SUPPRESSED')
    order by created_at desc, id desc limit 1`;
  if (!latest || latest.status !== "PENDING") return { row: latest, busy: false };
  // A PENDING one may be mid-send in a sender's transaction: then it counts as sent just now.
  const [locked] = await tx<DeliveryRow[]>`select * from deliveries where id = ${latest.id} for update skip locked`;
  return locked ? { row: locked, busy: false } : { row: latest, busy: true };
}

/** Marks a pending delivery as merged into a later one. */
export async function markCoalesced(tx: Tx, id: string, into: string): Promise<void> {
  await tx`
    update deliveries set status = 'COALESCED', next_attempt_at = null, coalesced_into = ${into},
      last_error = null where id = ${id}`;
}

/** Claims due deliveries of one channel for this transaction (other senders skip them). */
export async function claimDueDeliveries(tx: Tx, channel: ChannelName, limit: number): Promise<DeliveryRow[]> {
  return tx<DeliveryRow[]>`
    select * from deliveries
    where status = 'PENDING' and channel = ${channel} and next_attempt_at <= now()
    order by next_attempt_at
    limit ${limit}
    for update skip locked`;
}

/** Claims one delivery by id (SendTest's inline attempt); undefined if another sender holds it. */
export async function claimDelivery(tx: Tx, id: string): Promise<DeliveryRow | undefined> {
  const [row] = await tx<DeliveryRow[]>`select * from deliveries where id = ${id} and status = 'PENDING' for update skip locked`;
  return row;
}

/**
 * Serialises senders per recipient until the transaction ends, so concurrent batches cannot both
 * pass the rate cap for one inbox. Locks are taken in sorted order, so two batches never deadlock.
 */
export async function lockRecipients(tx: Tx, recipients: string[]): Promise<void> {
  const sorted = [...new Set(recipients)].sort();
  if (sorted.length === 0) return;
  await tx`
    select pg_advisory_xact_lock(hashtextextended('coursemesh.notifier.recipient:' || r, 0))
    from unnest(${sorted}::text[]) with ordinality as t(r, n) order by n`;
}

/** Sent messages per recipient since `since` (for the rate cap). */
export async function sentCountsSince(db: Db, recipients: string[], since: Date): Promise<Map<string, number>> {
  if (recipients.length === 0) return new Map();
  const rows = await db<{ recipient: string; sent: number }[]>`
    select recipient, count(*)::int as sent from deliveries
    where status = 'SENT' and recipient = any(${recipients}::text[]) and sent_at > ${since}
    group by recipient`;
  return new Map(rows.map((r) => [r.recipient, r.sent]));
}

/** The oldest send inside the rate window, so a refusal can say when to retry. */
export async function oldestSentSince(db: Db, recipient: string, since: Date): Promise<Date | undefined> {
  const [row] = await db<{ sent_at: Date }[]>`
    select min(sent_at) as sent_at from deliveries where status = 'SENT' and recipient = ${recipient} and sent_at > ${since}`;
  return row?.sent_at ?? undefined;
}

/** The outcome of one attempt, as the sender records it. */
export interface AttemptOutcome {
  id: string;
  status: DeliveryStatusName;
  /** Attempts after this one (unchanged when nothing was attempted, e.g. SUPPRESSED). */
  attempts: number;
  lastError: string | null;
  nextAttemptAt: Date | null;
  sentAt: Date | null;
}

/** Writes the outcomes of a batch in one statement. */
export async function recordOutcomes(tx: Tx, outcomes: AttemptOutcome[]): Promise<void> {
  if (outcomes.length === 0) return;
  await tx`
    update deliveries d set
      status = o.status, attempts = o.attempts, last_error = o.last_error,
      next_attempt_at = o.next_attempt_at, sent_at = o.sent_at
    from unnest(${outcomes.map((o) => o.id)}::uuid[], ${outcomes.map((o) => o.status)}::text[], ${outcomes.map((o) => o.attempts)}::int[],
                ${outcomes.map((o) => o.lastError) as string[]}::text[], ${outcomes.map((o) => o.nextAttemptAt?.toISOString() ?? null) as string[]}::timestamptz[],
                ${outcomes.map((o) => o.sentAt?.toISOString() ?? null) as string[]}::timestamptz[])
      as o(id, status, attempts, last_error, next_attempt_at, sent_at)
    where d.id = o.id`;
}

/** One delivery by id. */
export async function getDelivery(db: Db, id: string): Promise<DeliveryRow | undefined> {
  const [row] = await db<DeliveryRow[]>`select * from deliveries where id = ${id}`;
  return row;
}

/**
 * Deletes up to `limit` finished notifications (any status but PENDING) finished before `before`,
 * oldest first; returns the status of each deleted row. Rows another transaction holds are skipped,
 * so replicas pruning at once split the work instead of waiting on each other.
 */
export async function deleteFinishedBefore(db: Db, before: Date, limit: number): Promise<DeliveryStatusName[]> {
  const rows = await db<{ status: DeliveryStatusName }[]>`
    with doomed as (
      select id from deliveries
      where status <> 'PENDING' and coalesce(sent_at, created_at) < ${before}
      order by coalesce(sent_at, created_at)
      limit ${limit}
      for update skip locked
    )
    delete from deliveries d using doomed where d.id = doomed.id
    returning d.status`;
  return rows.map((r) => r.status);
}

export interface DeliveryQuery {
  owner?: string;
  monitorId?: string;
  courseId?: string;
  studentId?: string;
  jobId?: string;
  recipient?: string;
  eventId?: string;
  status?: DeliveryStatusName;
  beforeId?: string;
  limit: number;
}

/** A page of the notification history, newest first. */
export async function listDeliveries(db: Db, q: DeliveryQuery): Promise<DeliveryRow[]> {
  return db<DeliveryRow[]>`
    select * from deliveries
    where true
      ${q.owner !== undefined ? db`and owner = ${q.owner}` : db``}
      ${q.monitorId ? db`and monitor_id = ${q.monitorId}` : db``}
      ${q.courseId ? db`and course_id = ${q.courseId}` : db``}
      ${q.studentId ? db`and student_id = ${q.studentId}` : db``}
      ${q.jobId ? db`and job_id = ${q.jobId}` : db``}
      ${q.recipient ? db`and recipient = ${q.recipient}` : db``}
      ${q.eventId ? db`and event_id = ${q.eventId}` : db``}
      ${q.status ? db`and status = ${q.status}` : db``}
      ${q.beforeId ? db`and id < ${q.beforeId}` : db``}
    order by id desc
    limit ${q.limit}`;
}
