/**
 * How an event looks on the wire: a proto3-JSON body and the headers of DESIGN.md §Events. The relay
 * publishes outbox rows through a `createEventPublisher`; code that has no state change to commit
 * (and tests) may call `publishEvent` directly. Both put the same message and span on the wire.
 */
import { trace } from "@opentelemetry/api";
import { createInbox, headers as natsHeaders, type MsgHdrs, type NatsConnection } from "@nats-io/transport-node";
import type { JetStreamClient, PubAck } from "@nats-io/jetstream";
import { extractTraceContext, injectTraceContext, recordError, SpanKind, type Context } from "../telemetry.ts";
import { prefixedSubject } from "./streams.ts";

/** Header names every event carries, plus the ones a dead-lettered copy adds. */
export const EventHeader = {
  MsgId: "Nats-Msg-Id",
  ContentType: "Content-Type",
  Event: "Coursemesh-Event",
  AggregateId: "Coursemesh-Aggregate-Id",
  AggregateVersion: "Coursemesh-Aggregate-Version",
  Traceparent: "traceparent",
  Tracestate: "tracestate",
  DeadLetterError: "Coursemesh-Error",
  DeadLetterReason: "Coursemesh-Dead-Letter-Reason",
  DeadLetterDeliveries: "Coursemesh-Deliveries",
  DeadLetterConsumer: "Coursemesh-Consumer",
  DeadLetterStream: "Coursemesh-Original-Stream",
  DeadLetterSubject: "Coursemesh-Original-Subject",
  DeadLetterSequence: "Coursemesh-Original-Sequence",
} as const;

export const JSON_CONTENT_TYPE = "application/json";

/** One event ready to go on the wire. */
export interface WireEvent {
  eventId: string;
  /** Without the deployment prefix, e.g. `seats.changed.<monitor_id>`. */
  subject: string;
  /** The message's full name, e.g. `coursemesh.events.v1.SeatsChanged`. */
  type: string;
  aggregateId?: string | null;
  aggregateVersion?: string | number | bigint | null;
  /** The proto3-JSON body, already serialized. */
  body: string | Uint8Array;
}

export interface PublishContext {
  js: JetStreamClient;
  prefix: string;
  /** Names the span `<service>.publish`. */
  service: string;
  timeoutMs?: number;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Header values are single lines; NATS would reject CR/LF. */
export function headerValue(value: string, maxLength = 1024): string {
  const line = value.replace(/[\r\n]+/g, " ").trim();
  return line.length > maxLength ? `${line.slice(0, maxLength - 1)}…` : line;
}

/** The headers of an event (without `Nats-Msg-Id`, which the publish option sets) carrying `ctx`'s trace. */
export function eventHeaders(event: WireEvent, ctx: Context): MsgHdrs {
  // append, not set: the map is fresh, and set() first searches it for the key on every call.
  const h = natsHeaders();
  h.append(EventHeader.ContentType, JSON_CONTENT_TYPE);
  h.append(EventHeader.Event, event.type);
  if (event.aggregateId != null) h.append(EventHeader.AggregateId, event.aggregateId);
  if (event.aggregateVersion != null) h.append(EventHeader.AggregateVersion, String(event.aggregateVersion));
  const carrier = injectTraceContext({}, ctx);
  if (carrier.traceparent) h.append(EventHeader.Traceparent, carrier.traceparent);
  if (carrier.tracestate) h.append(EventHeader.Tracestate, carrier.tracestate);
  return h;
}

/** Reads a header map into a plain object (for trace extraction and logging). */
export function headersToObject(h: MsgHdrs | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!h) return out;
  for (const key of h.keys()) out[key] = h.get(key);
  return out;
}

/** What JetStream answered for a stored message (the fields of its PubAck that publishers read). */
export interface EventAck {
  stream: string;
  seq: number;
  duplicate: boolean;
}

/**
 * Runs one publish inside a PRODUCER span `<service>.publish` whose parent is `parent` (the outbox
 * row's stored trace), so the consumer continues that trace. `send` gets the event's headers, which
 * carry the span's context.
 */
function traced<A extends EventAck>(service: string, subject: string, event: WireEvent, data: Uint8Array, parent: Context, send: (headers: MsgHdrs) => Promise<A>): Promise<A> {
  // The relay's hot path: a plain span (not made active) keeps the per-message cost low; nothing
  // below needs the active context, the headers get the span's context explicitly.
  const span = trace.getTracer("coursemesh").startSpan(
    `${service}.publish`,
    {
      kind: SpanKind.PRODUCER,
      attributes: {
        "messaging.system": "nats",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": subject,
        "messaging.message.id": event.eventId,
        "messaging.message.body.size": data.byteLength,
        "coursemesh.event.type": event.type,
      },
    },
    parent,
  );
  let published: Promise<A>;
  try {
    published = send(eventHeaders(event, trace.setSpan(parent, span)));
  } catch (error) {
    published = Promise.reject(error);
  }
  return published.then(
    (ack) => {
      if (span.isRecording()) {
        span.setAttribute("messaging.nats.stream", ack.stream);
        span.setAttribute("messaging.nats.sequence", ack.seq);
        if (ack.duplicate) span.setAttribute("messaging.nats.duplicate", true);
      }
      span.end();
      return ack;
    },
    (error: unknown) => {
      recordError(span, error);
      span.end();
      throw error;
    },
  );
}

/** Publishes one event and waits for JetStream's ack, traced (see `traced`). */
export function publishEvent(target: PublishContext, event: WireEvent, parent: Context): Promise<PubAck> {
  const subject = prefixedSubject(target.prefix, event.subject);
  const data = typeof event.body === "string" ? encoder.encode(event.body) : event.body;
  return traced(target.service, subject, event, data, parent, (headers) =>
    target.js.publish(subject, data, { msgID: event.eventId, headers, timeout: target.timeoutMs }),
  );
}

/** A publisher of many events at once on one connection (the relay's). */
export interface EventPublisher {
  /** Publishes one event, traced like `publishEvent`; resolves with JetStream's ack. */
  publish(event: WireEvent, parent: Context): Promise<EventAck>;
  /** Stops waiting: every publish not yet acknowledged fails. */
  close(): void;
}

/**
 * Publishes events to JetStream the way `publishEvent` does, for a stream of thousands: each is a
 * plain publish whose reply subject is one token under an inbox of its own, and one subscription
 * takes every ack, where `js.publish` sets up a request (a subscription entry, a timer, a promise and
 * an error object) per message — most of the relay's CPU per event. A sweep fails the publishes older
 * than `timeoutMs`. Messages go out in call order on `nc`.
 */
export function createEventPublisher(nc: NatsConnection, target: Omit<PublishContext, "js">): EventPublisher {
  const timeoutMs = target.timeoutMs ?? 5000;
  const inbox = createInbox();
  type Waiting = { resolve: (ack: EventAck) => void; reject: (error: unknown) => void; sentAt: number };
  // Insertion order is publish order, so the oldest waiting publish comes first.
  const waiting = new Map<string, Waiting>();
  let next = 0;
  let closed: Error | undefined;

  const settle = (token: string, outcome: (w: Waiting) => void) => {
    const w = waiting.get(token);
    if (!w) return;
    waiting.delete(token);
    outcome(w);
  };
  const subscription = nc.subscribe(`${inbox}.*`, {
    callback: (error, msg) => {
      if (error) return failAll(error);
      const token = msg.subject.slice(inbox.length + 1);
      // No stream listens on the subject: the server answers 503 with no data.
      if (msg.data.length === 0) return settle(token, (w) => w.reject(new Error(`no JetStream stream answered for ${msg.subject} (status ${msg.headers?.code ?? "none"})`)));
      let ack: { stream?: string; seq?: number; duplicate?: boolean; error?: { code?: number; description?: string } };
      try {
        ack = JSON.parse(decoder.decode(msg.data));
      } catch (parseError) {
        return settle(token, (w) => w.reject(parseError));
      }
      if (ack.error || !ack.stream) return settle(token, (w) => w.reject(new Error(`JetStream refused the message: ${ack.error?.description ?? "invalid ack"} (${ack.error?.code ?? ""})`)));
      settle(token, (w) => w.resolve({ stream: ack.stream!, seq: ack.seq ?? 0, duplicate: ack.duplicate ?? false }));
    },
  });
  const sweep = setInterval(
    () => {
      const expired = performance.now() - timeoutMs;
      for (const [token, w] of waiting) {
        if (w.sentAt > expired) break;
        settle(token, (x) => x.reject(new Error(`no JetStream ack within ${timeoutMs} ms`)));
      }
    },
    Math.max(10, Math.min(1000, timeoutMs / 4)),
  );

  function failAll(error: unknown): void {
    for (const token of [...waiting.keys()]) settle(token, (w) => w.reject(error));
  }
  // A closed connection answers nothing more: fail what waits now rather than at the sweep.
  void nc.closed().then((error) => {
    closed ??= error ?? new Error("NATS connection closed");
    clearInterval(sweep);
    failAll(closed);
  });

  return {
    publish(event, parent) {
      if (closed) return Promise.reject(closed);
      const subject = prefixedSubject(target.prefix, event.subject);
      const data = typeof event.body === "string" ? encoder.encode(event.body) : event.body;
      return traced(target.service, subject, event, data, parent, (headers) => {
        headers.append(EventHeader.MsgId, event.eventId);
        const token = String(next++);
        const acked = new Promise<EventAck>((resolve, reject) => waiting.set(token, { resolve, reject, sentAt: performance.now() }));
        try {
          nc.publish(subject, data, { reply: `${inbox}.${token}`, headers });
        } catch (error) {
          settle(token, (w) => w.reject(error));
        }
        return acked;
      });
    },
    close() {
      closed ??= new Error("the publisher was closed");
      clearInterval(sweep);
      subscription.unsubscribe();
      failAll(closed);
    },
  };
}

/** The trace context stored with an outbox row (the root context when it has none). */
export function storedTraceContext(traceparent: string | null | undefined, tracestate: string | null | undefined): Context {
  if (!traceparent) return extractTraceContext(undefined);
  return extractTraceContext(tracestate ? { traceparent, tracestate } : { traceparent });
}
