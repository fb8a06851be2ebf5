/**
 * Writing events: `enqueue` puts an event in the service's `outbox` table inside the caller's
 * transaction, so the state change and its event commit (or roll back) together. The relay
 * (relay.ts) publishes it afterwards. A statement that makes thousands of events at once (a batch
 * of decisions) builds them in SQL and writes them with `insertOutboxRows`, the same INSERT that
 * `enqueueMany` runs, as part of its own statement.
 */
import type postgres from "postgres";
import type { Sql, Tx } from "../db.ts";
import { injectTraceContext } from "../telemetry.ts";
import { streamForSubject } from "./streams.ts";

/** An event to publish once the caller's transaction commits. */
export interface OutboxEvent {
  /** Without the deployment prefix: `<domain>.<event>.<key>`, e.g. `seats.changed.${monitorId}`. */
  subject: string;
  /** The message's full name, e.g. `coursemesh.events.v1.SeatsChanged`. */
  type: string;
  /** The proto3-JSON object of the message (e.g. `SeatsChanged.toJSON(msg)`); `eventId` and `occurredAt` are filled in. */
  payload: Record<string, unknown>;
  /** The aggregate the event is about (monitor, course, job); consumers order and drop stale events by it. */
  aggregateId?: string;
  /** The aggregate's version after this change; bump it (locking the aggregate's row) before enqueueing. */
  aggregateVersion?: number | bigint;
  /** A caller-chosen UUID; by default a fresh UUIDv7. */
  eventId?: string;
}

/** NATS refuses messages over the server's max_payload (1 MiB by default); fail in the writer's transaction instead of wedging the relay. */
export const MAX_EVENT_BYTES = 512 * 1024;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const wakeListeners = new Set<() => void>();

/** Subscribes a relay of this process to "an event was just written"; returns the unsubscribe. */
export function onOutboxWrite(listener: () => void): () => void {
  wakeListeners.add(listener);
  return () => wakeListeners.delete(listener);
}

function wakeLocalRelays(): void {
  for (const listener of wakeListeners) listener();
}

interface PreparedRow {
  eventId: string;
  subject: string;
  type: string;
  aggregateId: string | null;
  aggregateVersion: string | null;
  payload: string;
}

function prepare(event: OutboxEvent, occurredAt: string): PreparedRow {
  streamForSubject(event.subject);
  if (!event.type.includes(".")) throw new Error(`event type "${event.type}" must be the message's full name, e.g. coursemesh.events.v1.SeatsChanged`);
  if (event.eventId !== undefined && !UUID.test(event.eventId)) throw new Error(`eventId "${event.eventId}" must be a UUID`);
  const eventId = event.eventId ?? Bun.randomUUIDv7();
  const body: Record<string, unknown> = { ...event.payload, eventId };
  body.occurredAt ??= occurredAt;
  if (event.aggregateVersion !== undefined) body.aggregateVersion ??= Number(event.aggregateVersion);
  const payload = JSON.stringify(body);
  const size = Buffer.byteLength(payload);
  if (size > MAX_EVENT_BYTES) {
    throw new Error(`event ${event.type} on ${event.subject} is ${size} bytes; the limit is ${MAX_EVENT_BYTES}`);
  }
  return {
    eventId,
    subject: event.subject,
    type: event.type,
    aggregateId: event.aggregateId ?? null,
    aggregateVersion: event.aggregateVersion === undefined ? null : String(event.aggregateVersion),
    payload,
  };
}

type Fragment = postgres.PendingQuery<postgres.Row[]>;

/**
 * The one INSERT into the outbox, as a fragment: a statement of its own or a data-modifying CTE of
 * the caller's statement (which must run inside the transaction that makes the change). `rows`
 * selects one row per event with the columns `event_id` (uuid, or its text), `subject`,
 * `event_type`, `aggregate_id` (text), `aggregate_version` (bigint), `payload` (the proto3-JSON
 * body as text, with `eventId`, `occurredAt` and `aggregateVersion` in it) and `position`; rows get
 * their outbox ids — the relay's publishing order — in `position` order. Every row keeps `trace`.
 * Writers of SQL-built rows tell the relay themselves (`onOutboxWrite` is not called).
 */
export function insertOutboxRows(sql: Sql | Tx, rows: Fragment, trace: { traceparent: string | null; tracestate: string | null }): Fragment {
  return sql`
    insert into outbox (event_id, subject, event_type, aggregate_id, aggregate_version, payload, traceparent, tracestate)
    select e.event_id::uuid, e.subject, e.event_type, e.aggregate_id, e.aggregate_version, e.payload::jsonb, ${trace.traceparent}::text, ${trace.tracestate}::text
    from (${rows}) e
    order by e.position`;
}

/**
 * SQL for the first 15 characters of UUIDv7s made at `at` (a timestamptz expression): its Unix
 * milliseconds as 12 hex digits with their dash, then the version digit. Computed once per
 * statement; `eventIdSql` completes it per row.
 */
export function eventIdPrefixSql(sql: Sql | Tx, at: Fragment): Fragment {
  return sql`(select substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7'
    from (select lpad(to_hex(floor(extract(epoch from ${at}) * 1000)::bigint), 12, '0') as h) t)`;
}

/**
 * A fresh UUIDv7 as text, per row, from a prefix made by `eventIdPrefixSql`: the random rest of a
 * v4 (its variant bits are v7's too) after the prefix. One gen_random_uuid() per row is cheaper
 * than assembling the random bits from random().
 */
export function eventIdSql(sql: Sql | Tx, prefix: Fragment): Fragment {
  return sql`(${prefix} || substr(gen_random_uuid()::text, 16))`;
}

/** Writes one event into the outbox inside `tx`; returns its event id (UUIDv7). */
export async function enqueue(tx: Tx, event: OutboxEvent): Promise<string> {
  const [eventId] = await enqueueMany(tx, [event]);
  return eventId!;
}

/**
 * Writes several events into the outbox inside `tx` with one statement, in the given order (a batch
 * decision's events); returns their event ids. Each row keeps the active trace context.
 */
export async function enqueueMany(tx: Tx, events: readonly OutboxEvent[]): Promise<string[]> {
  if (events.length === 0) return [];
  const occurredAt = new Date().toISOString();
  const rows = events.map((event) => prepare(event, occurredAt));
  const trace = injectTraceContext({});
  const traceparent = trace.traceparent ?? null;
  const tracestate = trace.tracestate ?? null;
  // unnest keeps one statement text for any batch size, so it is prepared once; `with ordinality`
  // keeps the given order in the identity values.
  await insertOutboxRows(
    tx,
    tx`select * from unnest(
      ${rows.map((r) => r.eventId)}::uuid[],
      ${rows.map((r) => r.subject)}::text[],
      ${rows.map((r) => r.type)}::text[],
      ${rows.map((r) => r.aggregateId)}::text[],
      ${rows.map((r) => r.aggregateVersion)}::bigint[],
      ${rows.map((r) => r.payload)}::text[]
    ) with ordinality as e(event_id, subject, event_type, aggregate_id, aggregate_version, payload, position)`,
    { traceparent, tracestate },
  );
  // The relay may look before this transaction commits; it looks again shortly after a wake-up.
  wakeLocalRelays();
  return rows.map((r) => r.eventId);
}
