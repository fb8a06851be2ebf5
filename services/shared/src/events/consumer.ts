/**
 * The consumer loop: a durable pull consumer whose handler runs inside a Postgres transaction that
 * also records the event as consumed, acked only after that transaction commits. A redelivery (a
 * crash between commit and ack, or a republish beyond JetStream's duplicate window) finds the
 * `consumed_events` row and is acked without effect; an event older than the aggregate version the
 * consumer already applied is acked and skipped. Transient failures are retried with `nak(delay)`;
 * poison, or a failure on the last attempt, is copied to the DLQ stream with the error and
 * terminated.
 *
 * Batch mode (`batchHandler`) decides up to `batchSize` fetched events in one transaction: the
 * dedupe rows and aggregate versions are written set-based, and the acks follow its commit. A batch
 * that fails is decided again one event per transaction, so a poison event is isolated and the
 * rest still commit; nak, term and the DLQ work as above. Events of one aggregate stay in delivery
 * order: a batch takes them in order, and no two batches in flight share an aggregate.
 */
import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiError,
  JetStreamApiCodes,
  jetstream,
  jetstreamManager,
  type ConsumerConfig,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from "@nats-io/jetstream";
import { headers as natsHeaders, type NatsConnection } from "@nats-io/transport-node";
import { context as otelContext, trace, type Context, type Span } from "@opentelemetry/api";
import { Counter } from "prom-client";
import type { Sql, Tx } from "../db.ts";
import type { Logger } from "../logger.ts";
import { registry } from "../metrics.ts";
import { extractTraceContext, recordError, SpanKind, withSpan, type Attributes } from "../telemetry.ts";
import { EventHeader, headersToObject, headerValue } from "./publish.ts";
import { consumerName, prefixedSubject, streamName, unprefixedSubject, type StreamName } from "./streams.ts";

/** An event as a handler sees it. */
export interface ConsumedEvent<T = Record<string, unknown>> {
  eventId: string;
  /** The message's full name (`Coursemesh-Event`). */
  type: string;
  /** Without the deployment prefix. */
  subject: string;
  aggregateId: string | null;
  aggregateVersion: number | null;
  /** The proto3-JSON body, parsed (e.g. `SeatsChanged.fromJSON(event.payload)`). */
  payload: T;
  headers: Record<string, string>;
  /** 1 on the first delivery. */
  deliveryCount: number;
  streamSequence: number;
  /**
   * The context of this event's `<service>.process` span. Batch handlers pass it on (e.g. as a
   * row's traceparent) so later work continues the event's trace; one-event handlers run inside it.
   */
  trace?: Context;
}

/**
 * Runs inside the consumer's transaction: write your changes with `tx`. Throw `PoisonEventError` for
 * an event that can never succeed; anything else is retried. For work longer than the ack wait,
 * the loop calls `msg.working()` for you.
 */
export type EventHandler<T> = (tx: Tx, event: ConsumedEvent<T>, msg: JsMsg) => Promise<void>;

/**
 * Batch mode: runs inside one transaction for a batch of events that are new to this consumer (and
 * not stale), in delivery order. Write with `tx`, set-based where you can. Throwing anything fails
 * the whole batch, whose events are then decided again one per transaction (a one-event batch
 * each): only there does `PoisonEventError` send an event to the DLQ at once. What it returns goes
 * to `afterCommit`.
 */
export type BatchEventHandler<T, R = unknown> = (tx: Tx, events: ConsumedEvent<T>[]) => Promise<R>;

/** Thrown by a handler (or the loop) for an event that will never succeed: it goes to the DLQ at once. */
export class PoisonEventError extends Error {
  override name = "PoisonEventError";
}

export interface ConsumerOptions<T, R = unknown> {
  sql: Sql;
  nats: NatsConnection;
  /** Names spans (`<service>.process`) and the DLQ subject `dlq.<service>.<durable>`. */
  service: string;
  /** NATS_PREFIX of the deployment. */
  prefix: string;
  logger: Logger;
  stream: StreamName;
  /** The durable consumer's name (letters, digits, - and _); also its key in `consumed_events`. */
  durable: string;
  /** Subjects without the prefix; all of the stream when left out. More than one needs nats-server 2.10+. */
  filterSubjects?: string[];
  /** One event per transaction. Give this or `batchHandler`. */
  handler?: EventHandler<T>;
  /** Batch mode: up to `batchSize` events per transaction. Give this or `handler`. */
  batchHandler?: BatchEventHandler<T, R>;
  /** Batch mode: the most events one transaction decides (default 100). */
  batchSize?: number;
  /**
   * Batch mode: runs after a transaction that applied events commits and before their acks, with
   * the batch handler's result (e.g. to wake a worker for the rows it wrote).
   */
  afterCommit?: (result: R, events: ConsumedEvent<T>[]) => void;
  /**
   * Handlers (batch mode: transactions) running at once; events of one aggregate still run one at
   * a time, in order.
   */
  concurrency?: number;
  /** Messages delivered but not yet acked, across all replicas of this consumer. */
  maxAckPending?: number;
  /** Deliveries before a failing event is dead-lettered. */
  maxDeliver?: number;
  /** Delay before redelivery after the n-th failed attempt (the last entry repeats). */
  backoffMs?: number[];
  ackWaitMs?: number;
  /**
   * Ack and skip an event whose aggregate_version is not above the last one applied. Right for
   * events that carry state; turn it off for a stream of facts that must each be handled.
   */
  skipStaleVersions?: boolean;
  /** How long `consumed_events` rows are kept; longer than the stream's max_age. */
  dedupeRetentionMs?: number;
}

export type ConsumeOutcome = "applied" | "duplicate" | "stale" | "retried" | "dead-lettered";

export interface RunningConsumer {
  /** Counts of outcomes since start. */
  stats(): Record<ConsumeOutcome, number>;
  /** Stops fetching, finishes the handlers in flight (batch mode: and the events already fetched), and returns. */
  stop(): Promise<void>;
}

const consumedTotal = new Counter({
  name: "coursemesh_events_consumed_total",
  help: "Events a consumer finished with, by consumer and outcome.",
  labelNames: ["consumer", "outcome"] as const,
  registers: [registry],
});

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const DURABLE = /^[A-Za-z0-9_-]+$/;
const nanos = (ms: number) => ms * 1_000_000;
const decoder = new TextDecoder();

/** Failures of our own infrastructure, not of the event: retried for as long as they last, never dead-lettered. */
export function isInfrastructureError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== "string") return false;
  return (
    code.startsWith("CONNECTION_") ||
    code === "CONNECT_TIMEOUT" ||
    code === "ECONNREFUSED" ||
    code === "ECONNRESET" ||
    code.startsWith("08") || // connection exception
    code === "57P01" || // admin shutdown
    code === "57P03" || // cannot connect now
    code === "53300" || // too many connections
    code === "40001" || // serialization failure
    code === "40P01" // deadlock
  );
}

/** Parses a delivered message into an event; a message without our headers or with bad JSON is poison. */
export function parseEvent<T>(msg: JsMsg, prefix: string): ConsumedEvent<T> {
  const headers = headersToObject(msg.headers);
  const type = headers[EventHeader.Event] ?? "";
  if (!type) throw new PoisonEventError(`message ${msg.seq} on ${msg.subject} has no ${EventHeader.Event} header`);
  let payload: T;
  try {
    payload = JSON.parse(decoder.decode(msg.data)) as T;
  } catch (error) {
    throw new PoisonEventError(`message ${msg.seq} (${type}) is not JSON: ${(error as Error).message}`);
  }
  // The body's eventId is the event's identity; Nats-Msg-Id equals it unless someone republished
  // the event (a DLQ re-drive) under a new one, which must still dedupe.
  const bodyId = (payload as { eventId?: unknown } | null)?.eventId;
  const eventId = typeof bodyId === "string" && UUID.test(bodyId) ? bodyId : (headers[EventHeader.MsgId] ?? "");
  if (!UUID.test(eventId)) throw new PoisonEventError(`message ${msg.seq} (${type}) has no UUID eventId in its body or ${EventHeader.MsgId} header`);
  const rawVersion = headers[EventHeader.AggregateVersion];
  const aggregateVersion = rawVersion === undefined || rawVersion === "" ? null : Number(rawVersion);
  if (aggregateVersion !== null && !Number.isSafeInteger(aggregateVersion)) {
    throw new PoisonEventError(`event ${eventId} has a bad ${EventHeader.AggregateVersion} "${rawVersion}"`);
  }
  return {
    eventId,
    type,
    subject: unprefixedSubject(prefix, msg.subject),
    aggregateId: headers[EventHeader.AggregateId] || null,
    aggregateVersion,
    payload,
    headers,
    deliveryCount: msg.info.deliveryCount,
    streamSequence: msg.seq,
  };
}

/** Creates the durable consumer, or updates the settings that may change on a live one. */
async function ensureConsumer(jsm: JetStreamManager, stream: string, config: Partial<ConsumerConfig> & { durable_name: string }): Promise<void> {
  try {
    const info = await jsm.consumers.info(stream, config.durable_name);
    const current = info.config;
    const changed =
      current.ack_wait !== config.ack_wait ||
      current.max_ack_pending !== config.max_ack_pending ||
      current.max_deliver !== config.max_deliver ||
      (current.filter_subject ?? "") !== (config.filter_subject ?? "") ||
      JSON.stringify(current.filter_subjects ?? []) !== JSON.stringify(config.filter_subjects ?? []);
    if (changed) {
      const { durable_name: _durable, deliver_policy: _deliver, ack_policy: _ack, ...updatable } = config;
      await jsm.consumers.update(stream, config.durable_name, updatable);
    }
  } catch (error) {
    if (!(error instanceof JetStreamApiError && error.code === JetStreamApiCodes.ConsumerNotFound)) throw error;
    await jsm.consumers.add(stream, config);
  }
}

/** A counting semaphore for the handlers in flight. */
class Slots {
  private free: number;
  private waiters: (() => void)[] = [];
  constructor(size: number) {
    this.free = size;
  }
  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((resolve) => this.waiters.push(resolve));
  }
  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.free++;
  }
}

/** Starts a durable consumer loop that restarts itself after failures until `stop()`. */
export async function startConsumer<T = Record<string, unknown>, R = unknown>(options: ConsumerOptions<T, R>): Promise<RunningConsumer> {
  const { sql, nats, service, prefix, durable, handler, batchHandler } = options;
  if (!DURABLE.test(durable)) throw new Error(`durable "${durable}" must be letters, digits, - and _`);
  if ((handler === undefined) === (batchHandler === undefined)) throw new Error(`consumer "${durable}" needs exactly one of handler and batchHandler`);
  const batchSize = Math.max(1, Math.floor(options.batchSize ?? 100));
  const concurrency = options.concurrency ?? 4;
  const maxDeliver = options.maxDeliver ?? 5;
  const backoffMs = options.backoffMs?.length ? options.backoffMs : [1000, 5000, 15_000, 60_000];
  const ackWaitMs = options.ackWaitMs ?? 30_000;
  const skipStale = options.skipStaleVersions ?? true;
  const retentionSeconds = Math.round((options.dedupeRetentionMs ?? 30 * 24 * 60 * 60 * 1000) / 1000);
  const stream = streamName(prefix, options.stream);
  const name = consumerName(prefix, durable);
  const dlqSubject = prefixedSubject(prefix, `dlq.${service}.${durable}`);
  const log = options.logger.child({ component: "event-consumer", stream, consumer: name });
  const filters = (options.filterSubjects ?? []).map((s) => prefixedSubject(prefix, s));

  const jsm = await jetstreamManager(nats);
  const js: JetStreamClient = jetstream(nats);
  const config: Partial<ConsumerConfig> & { durable_name: string } = {
    durable_name: name,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos(ackWaitMs),
    // The loop counts attempts itself; the server never silently drops a message.
    max_deliver: -1,
    // Batch mode holds a queue of up to `batchSize * concurrency` events besides the batches in flight.
    max_ack_pending: options.maxAckPending ?? (batchHandler ? batchSize * concurrency * 2 : concurrency * 4),
    ...(filters.length === 1 ? { filter_subject: filters[0] } : filters.length > 1 ? { filter_subjects: filters } : {}),
  };
  await ensureConsumer(jsm, stream, config);

  const stats: Record<ConsumeOutcome, number> = { applied: 0, duplicate: 0, stale: 0, retried: 0, "dead-lettered": 0 };
  const count = (outcome: ConsumeOutcome) => {
    stats[outcome]++;
    consumedTotal.inc({ consumer: name, outcome });
  };
  const slots = new Slots(concurrency);
  const inFlight = new Set<Promise<void>>();
  // Events of one aggregate run one after another, in delivery order, within this process.
  const aggregateChains = new Map<string, Promise<void>>();
  let stopping = false;
  let messages: ConsumerMessages | undefined;

  function serialized(key: string | null, work: () => Promise<void>): Promise<void> {
    if (!key) return work();
    const previous = aggregateChains.get(key) ?? Promise.resolve();
    // A failure of the previous event must not stop the ones behind it.
    const run = previous.catch(() => {}).then(work);
    aggregateChains.set(key, run);
    void run.finally(() => {
      if (aggregateChains.get(key) === run) aggregateChains.delete(key);
    });
    return run;
  }

  function retryDelay(deliveryCount: number): number {
    return backoffMs[Math.min(deliveryCount - 1, backoffMs.length - 1)]!;
  }

  async function deadLetter(msg: JsMsg, error: unknown, reason: "poison" | "attempts", eventId: string | undefined): Promise<void> {
    const message = error instanceof Error ? error.message : String(error);
    const h = natsHeaders();
    for (const [key, value] of Object.entries(headersToObject(msg.headers))) {
      if (key !== EventHeader.MsgId) h.set(key, value);
    }
    h.set(EventHeader.DeadLetterError, headerValue(message || "unknown error"));
    h.set(EventHeader.DeadLetterReason, reason);
    h.set(EventHeader.DeadLetterDeliveries, String(msg.info.deliveryCount));
    h.set(EventHeader.DeadLetterConsumer, name);
    h.set(EventHeader.DeadLetterStream, stream);
    h.set(EventHeader.DeadLetterSubject, msg.subject);
    h.set(EventHeader.DeadLetterSequence, String(msg.seq));
    try {
      await js.publish(dlqSubject, msg.data, { msgID: `${name}:${eventId ?? `${stream}:${msg.seq}`}`, headers: h });
    } catch (publishError) {
      // Not on the DLQ yet, so not terminated either: try again later.
      log.error({ err: publishError, seq: msg.seq }, "dead-lettering failed; the event will be redelivered");
      msg.nak(retryDelay(msg.info.deliveryCount));
      count("retried");
      return;
    }
    msg.term();
    count("dead-lettered");
    log.error({ err: error, eventId, seq: msg.seq, reason, deliveries: msg.info.deliveryCount, dlq: dlqSubject }, "event dead-lettered");
  }

  type Decided = "applied" | "duplicate" | "stale";

  async function apply(event: ConsumedEvent<T>, msg: JsMsg): Promise<Decided> {
    return (await sql.begin(async (tx) => {
      const [fresh] = await tx`
        insert into consumed_events (consumer, event_id) values (${durable}, ${event.eventId})
        on conflict do nothing returning true as fresh`;
      if (!fresh) return "duplicate";
      if (skipStale && event.aggregateId !== null && event.aggregateVersion !== null) {
        const [newer] = await tx`
          insert into consumer_aggregate_versions as applied (consumer, aggregate_id, version)
          values (${durable}, ${event.aggregateId}, ${event.aggregateVersion})
          on conflict (consumer, aggregate_id) do update set version = excluded.version, updated_at = now()
          where applied.version < excluded.version
          returning true as newer`;
        if (!newer) return "stale";
      }
      await handler!(tx, event, msg);
      return "applied";
    })) as Decided;
  }

  /** The attributes of an event's `<service>.process` span. */
  function processAttributes(msg: JsMsg, event: ConsumedEvent<T>): Attributes {
    return {
      "messaging.system": "nats",
      "messaging.operation.type": "process",
      "messaging.operation.name": "process",
      "messaging.destination.name": msg.subject,
      "messaging.consumer.group.name": name,
      "messaging.message.id": event.eventId,
      "messaging.message.body.size": msg.data.byteLength,
      "messaging.nats.stream": stream,
      "messaging.nats.sequence": msg.seq,
      "messaging.nats.delivery_count": event.deliveryCount,
      "coursemesh.event.type": event.type,
    };
  }

  /** A failed attempt: the DLQ for poison or the last attempt, otherwise a nak with backoff. */
  async function settleFailure(msg: JsMsg, event: ConsumedEvent<T>, error: unknown): Promise<void> {
    if (error instanceof PoisonEventError) {
      await deadLetter(msg, error, "poison", event.eventId);
    } else if (!isInfrastructureError(error) && event.deliveryCount >= maxDeliver) {
      await deadLetter(msg, error, "attempts", event.eventId);
    } else {
      msg.nak(retryDelay(event.deliveryCount));
      count("retried");
      log.warn({ err: error, eventId: event.eventId, deliveries: event.deliveryCount }, "event failed; it will be redelivered");
    }
  }

  async function handle(msg: JsMsg): Promise<void> {
    // Keeps the message ours while it waits behind its aggregate and while the handler runs.
    const heartbeat = setInterval(() => msg.working(), Math.max(50, Math.floor(ackWaitMs / 3)));
    try {
      let event: ConsumedEvent<T>;
      try {
        event = parseEvent<T>(msg, prefix);
      } catch (error) {
        return await deadLetter(msg, error, "poison", headersToObject(msg.headers)[EventHeader.MsgId]);
      }
      await serialized(event.aggregateId, () =>
        withSpan(
          `${service}.process`,
          { kind: SpanKind.CONSUMER, parent: extractTraceContext(event.headers), attributes: processAttributes(msg, event) },
          async (span) => {
            event.trace = otelContext.active();
            try {
              const outcome = await apply(event, msg);
              msg.ack();
              span.setAttribute("coursemesh.event.outcome", outcome);
              count(outcome);
            } catch (error) {
              recordError(span, error);
              await settleFailure(msg, event, error);
            }
          },
        ),
      );
    } finally {
      clearInterval(heartbeat);
    }
  }

  // ---- Batch mode ----

  /** An event of batch mode, from its arrival until its ack, nak or term. */
  interface HeldEvent {
    msg: JsMsg;
    event: ConsumedEvent<T>;
    span: Span;
  }

  interface BatchDecision {
    /** Per event of the batch, in order. */
    outcomes: Decided[];
    /** The events the batch handler applied. */
    applied: ConsumedEvent<T>[];
    result: R | undefined;
  }

  const tracer = trace.getTracer("coursemesh");
  // Parsed events waiting for a batch, in delivery order.
  const waiting: HeldEvent[] = [];
  // Aggregates with an event in a batch in flight: their later events wait until it is decided.
  const busyAggregates = new Set<string>();
  // Every message between its arrival and its ack, nak or term.
  const held = new Set<JsMsg>();
  const queueLimit = batchSize * concurrency;
  let batchesInFlight = 0;
  let pumpScheduled = false;
  const roomWaiters: (() => void)[] = [];
  // One timer keeps every held message ours (instead of one timer per message).
  const batchHeartbeat = batchHandler
    ? setInterval(() => {
        try {
          for (const msg of held) msg.working();
        } catch (error) {
          // A closed connection: the server redelivers these after the ack wait anyway.
          log.warn({ err: error }, "cannot extend the ack deadline of the events held");
        }
      }, Math.max(50, Math.floor(ackWaitMs / 3)))
    : undefined;

  function track(work: Promise<void>): void {
    const tracked = work
      .catch((error) => log.error({ err: error }, "event handling failed unexpectedly"))
      .finally(() => inFlight.delete(tracked));
    inFlight.add(tracked);
  }

  /** Batch mode's intake: parse, queue, and hold the fetch loop back while the queue is full. */
  async function admit(msg: JsMsg): Promise<void> {
    if (stopping) {
      msg.nak();
      return;
    }
    let event: ConsumedEvent<T>;
    try {
      event = parseEvent<T>(msg, prefix);
    } catch (error) {
      track(deadLetter(msg, error, "poison", headersToObject(msg.headers)[EventHeader.MsgId]));
      return;
    }
    const producer = extractTraceContext(event.headers);
    const span = tracer.startSpan(`${service}.process`, { kind: SpanKind.CONSUMER, attributes: processAttributes(msg, event) }, producer);
    event.trace = trace.setSpan(producer, span);
    waiting.push({ msg, event, span });
    held.add(msg);
    schedulePump();
    while (waiting.length >= queueLimit && !stopping) await new Promise<void>((resolve) => roomWaiters.push(resolve));
  }

  function schedulePump(): void {
    if (pumpScheduled) return;
    pumpScheduled = true;
    // After the I/O callbacks of this turn: messages that arrived together make one batch.
    setImmediate(pump);
  }

  /** Starts batches while there is room; also after stop(), so the events already fetched are decided. */
  function pump(): void {
    pumpScheduled = false;
    while (batchesInFlight < concurrency) {
      const batch = takeBatch();
      if (batch.length === 0) break;
      batchesInFlight++;
      track(
        runBatch(batch).finally(() => {
          batchesInFlight--;
          for (const { event } of batch) if (event.aggregateId !== null) busyAggregates.delete(event.aggregateId);
          pump();
        }),
      );
    }
    if (waiting.length < queueLimit || stopping) for (const wake of roomWaiters.splice(0)) wake();
  }

  /** The next batch: waiting events in delivery order, passing over aggregates a batch in flight holds. */
  function takeBatch(): HeldEvent[] {
    const batch: HeldEvent[] = [];
    const mine = new Set<string>();
    const rest: HeldEvent[] = [];
    for (const item of waiting) {
      const key = item.event.aggregateId;
      const free = key === null || mine.has(key) || !busyAggregates.has(key);
      if (batch.length < batchSize && free) {
        batch.push(item);
        if (key !== null && !mine.has(key)) {
          mine.add(key);
          busyAggregates.add(key);
        }
      } else {
        rest.push(item);
      }
    }
    waiting.splice(0, waiting.length, ...rest);
    return batch;
  }

  /** Decides a batch in one transaction; if that fails, each of its events in a transaction of its own. */
  async function runBatch(batch: HeldEvent[]): Promise<void> {
    let decision: BatchDecision;
    try {
      decision = await withSpan(
        `${service}.process_batch`,
        {
          root: true,
          links: batch.map((item) => ({ context: item.span.spanContext() })),
          attributes: { "messaging.batch.message_count": batch.length, "messaging.consumer.group.name": name, "messaging.nats.stream": stream },
        },
        () => applyBatch(batch.map((item) => item.event)),
      );
    } catch (error) {
      if (batch.length > 1 && !isInfrastructureError(error)) {
        // Something in the batch fails (or the batch as a whole): find out which, one event at a time.
        log.warn({ err: error, events: batch.length }, "batch failed; deciding its events one at a time");
        for (const item of batch) await runBatch([item]);
        return;
      }
      // One event failed, or the database is away (which no event is to blame for).
      for (const item of batch) {
        held.delete(item.msg);
        recordError(item.span, error);
        await settleFailure(item.msg, item.event, error).catch((settleError) =>
          log.error({ err: settleError, eventId: item.event.eventId }, "cannot nak or dead-letter the event; it comes back after the ack wait"),
        );
        item.span.end();
      }
      return;
    }
    if (decision.applied.length > 0 && options.afterCommit) {
      try {
        options.afterCommit(decision.result as R, decision.applied);
      } catch (error) {
        log.error({ err: error }, "afterCommit failed (the batch is committed and is acked)");
      }
    }
    batch.forEach((item, i) => {
      const outcome = decision.outcomes[i]!;
      held.delete(item.msg);
      try {
        item.msg.ack();
      } catch (error) {
        // Committed: the redelivery that follows a lost ack is a duplicate.
        log.warn({ err: error, eventId: item.event.eventId }, "ack failed after the commit; the event will come back as a duplicate");
      }
      item.span.setAttribute("coursemesh.event.outcome", outcome);
      item.span.end();
      count(outcome);
    });
  }

  /**
   * One transaction for a batch: the dedupe rows and the aggregate versions set-based, then the
   * batch handler with the events that are new and not stale.
   */
  async function applyBatch(events: ConsumedEvent<T>[]): Promise<BatchDecision> {
    return (await sql.begin(async (tx) => {
      const outcomes: Decided[] = events.map(() => "applied");
      // A repeat inside the batch (the same event under another Nats-Msg-Id) counts once.
      const firstOf = new Map<string, number>();
      events.forEach((event, i) => {
        const id = event.eventId.toLowerCase();
        if (firstOf.has(id)) outcomes[i] = "duplicate";
        else firstOf.set(id, i);
      });
      // Sorted, so concurrent batches (other replicas) take row locks in one order.
      const ids = [...firstOf.keys()].sort();
      const highest = new Map<string, number>();
      if (skipStale) {
        for (const i of firstOf.values()) {
          const { aggregateId, aggregateVersion } = events[i]!;
          if (aggregateId !== null && aggregateVersion !== null) highest.set(aggregateId, Math.max(highest.get(aggregateId) ?? aggregateVersion, aggregateVersion));
        }
      }
      const aggregates = [...highest.keys()].sort();
      // One round trip (pipelined): the dedupe rows; a version row for each aggregate seen for the
      // first time (holding its highest version here, which is what it ends with); and the row locks
      // of all of them, which also serialise this aggregate's batches across replicas.
      const [fresh, created, locked] = await Promise.all([
        tx<{ id: string }[]>`
          insert into consumed_events (consumer, event_id)
          select ${durable}, id from unnest(${ids}::uuid[]) as t(id)
          on conflict do nothing returning event_id::text as id`,
        aggregates.length === 0
          ? []
          : tx<{ aggregate_id: string }[]>`
          insert into consumer_aggregate_versions (consumer, aggregate_id, version)
          select ${durable}, a, v from unnest(${aggregates}::text[], ${aggregates.map((a) => highest.get(a)!)}::bigint[]) as t(a, v)
          on conflict do nothing returning aggregate_id`,
        aggregates.length === 0
          ? []
          : tx<{ aggregate_id: string; version: string }[]>`
          select aggregate_id, version from consumer_aggregate_versions
          where consumer = ${durable} and aggregate_id = any(${aggregates}::text[])
          order by aggregate_id for update`,
      ]);
      const freshIds = new Set(fresh.map((row) => row.id));
      const createdHere = new Set(created.map((row) => row.aggregate_id));
      const stored = new Map(locked.map((row) => [row.aggregate_id, Number(row.version)]));
      // The version each aggregate has reached, as the batch goes; none yet for a new one.
      const reached = new Map<string, number>();
      for (const key of aggregates) if (!createdHere.has(key)) reached.set(key, stored.get(key)!);
      const applied: ConsumedEvent<T>[] = [];
      events.forEach((event, i) => {
        if (outcomes[i] === "duplicate") return;
        if (!freshIds.has(event.eventId.toLowerCase())) {
          outcomes[i] = "duplicate";
          return;
        }
        if (skipStale && event.aggregateId !== null && event.aggregateVersion !== null) {
          const last = reached.get(event.aggregateId);
          if (last !== undefined && event.aggregateVersion <= last) {
            outcomes[i] = "stale";
            return;
          }
          reached.set(event.aggregateId, event.aggregateVersion);
        }
        applied.push(event);
      });
      const raised = aggregates.filter((key) => !createdHere.has(key) && reached.get(key)! > stored.get(key)!);
      // Sent ahead of the handler's statements (pipelined); awaited after them.
      const versionsRaised =
        raised.length === 0
          ? undefined
          : tx`
          update consumer_aggregate_versions as v set version = u.version, updated_at = now()
          from unnest(${raised}::text[], ${raised.map((key) => reached.get(key)!)}::bigint[]) as u(aggregate_id, version)
          where v.consumer = ${durable} and v.aggregate_id = u.aggregate_id`;
      versionsRaised?.catch(() => {});
      const result = applied.length > 0 ? await batchHandler!(tx, applied) : undefined;
      await versionsRaised;
      return { outcomes, applied, result };
    })) as BatchDecision;
  }

  async function pruneConsumed(): Promise<void> {
    await sql`
      delete from consumed_events
      where consumer = ${durable} and consumed_at < now() - make_interval(secs => ${retentionSeconds})`.catch((error) =>
      log.warn({ err: error }, "pruning consumed_events failed"),
    );
  }

  // Hourly, from a minute after start: dedupe rows older than the retention can no longer matter.
  const firstPrune = setTimeout(() => void pruneConsumed(), 60_000);
  const pruning = setInterval(() => void pruneConsumed(), 60 * 60 * 1000);
  firstPrune.unref?.();
  pruning.unref?.();

  const running = (async () => {
    let failures = 0;
    while (!stopping) {
      try {
        const consumer = await js.consumers.get(stream, name);
        // A deleted consumer (or stream) ends the iteration, so the loop below recreates it.
        messages = await consumer.consume({ max_messages: batchHandler ? queueLimit : concurrency, expires: 30_000, abort_on_missing_resource: true });
        if (stopping) messages.stop();
        for await (const msg of messages) {
          failures = 0;
          if (batchHandler) {
            await admit(msg);
            continue;
          }
          await slots.acquire();
          if (stopping) {
            slots.release();
            msg.nak();
            continue;
          }
          const work = handle(msg)
            .catch((error) => log.error({ err: error, seq: msg.seq }, "event handling failed unexpectedly"))
            .finally(() => {
              slots.release();
              inFlight.delete(work);
            });
          inFlight.add(work);
        }
      } catch (error) {
        failures++;
        log.warn({ err: error, attempt: failures }, "consumer loop failed; restarting");
      }
      if (stopping) break;
      await Bun.sleep(Math.min(200 * 2 ** Math.min(failures, 5), 5000));
      try {
        await ensureConsumer(jsm, stream, config);
      } catch (error) {
        log.warn({ err: error }, "cannot ensure the durable consumer; retrying");
      }
    }
  })();

  return {
    stats: () => ({ ...stats }),
    async stop() {
      stopping = true;
      clearTimeout(firstPrune);
      clearInterval(pruning);
      messages?.stop();
      for (const wake of roomWaiters.splice(0)) wake();
      await running;
      // Batch mode decides the events it already fetched: they are ours until acked, and handing
      // them back would only send them round again (possibly to this consumer's expiring pull).
      if (waiting.length > 0) pump();
      while (inFlight.size > 0) await Promise.all(inFlight);
      clearInterval(batchHeartbeat);
    },
  };
}
