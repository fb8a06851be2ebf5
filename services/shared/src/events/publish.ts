/**
 * How an event looks on the wire: a proto3-JSON body and the headers of DESIGN.md §Events. The relay
 * publishes outbox rows with `publishEvent`; code that has no state change to commit (and tests) may
 * call it directly.
 */
import { trace } from "@opentelemetry/api";
import { headers as natsHeaders, type MsgHdrs } from "@nats-io/transport-node";
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

/**
 * Publishes one event and waits for JetStream's ack inside a PRODUCER span `<service>.publish`
 * whose parent is `parent` (the outbox row's stored trace), so the consumer continues that trace.
 */
export function publishEvent(target: PublishContext, event: WireEvent, parent: Context): Promise<PubAck> {
  const subject = prefixedSubject(target.prefix, event.subject);
  const data = typeof event.body === "string" ? encoder.encode(event.body) : event.body;
  // The relay's hot path: a plain span (not made active) keeps the per-message cost low; nothing
  // below needs the active context, the headers get the span's context explicitly.
  const span = trace.getTracer("coursemesh").startSpan(
    `${target.service}.publish`,
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
  let published: Promise<PubAck>;
  try {
    published = target.js.publish(subject, data, {
      msgID: event.eventId,
      headers: eventHeaders(event, trace.setSpan(parent, span)),
      timeout: target.timeoutMs,
    });
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

/** The trace context stored with an outbox row (the root context when it has none). */
export function storedTraceContext(traceparent: string | null | undefined, tracestate: string | null | undefined): Context {
  if (!traceparent) return extractTraceContext(undefined);
  return extractTraceContext(tracestate ? { traceparent, tracestate } : { traceparent });
}
