/**
 * Fan-out: one event becomes one delivery row per subscribed recipient (unique per event, channel
 * and recipient), written in the consumer's transaction before the event is acked; a batch of
 * events is written by one statement. Seat emails are coalesced per (monitor, recipient): the
 * first goes at once; later ones inside the window fold into one trailing email, due at the
 * window's end, carrying the latest value.
 */
import { trace, type Context, type Span } from "@opentelemetry/api";
import type { Tx } from "@coursemesh/shared/db";
import { PoisonEventError } from "@coursemesh/shared/events/index";
import { injectTraceContext, recordError, withSpan } from "@coursemesh/shared/telemetry";
import { EVENT_TYPES, renderEventMessage, type EventType, type PayloadExtras } from "./messages.ts";
import type { ChannelName, Target } from "./recipients.ts";
import * as store from "./store.ts";
import type { SubscriptionRow } from "./store.ts";
import { unsubscribeLink } from "./subscriptions.ts";

export interface FanOutSettings {
  publicUrl: string;
  coalesceMs: number;
}

/** An event as the consumer hands it over: its subject (without prefix), id and proto3-JSON body. */
export interface IncomingEvent {
  eventId: string;
  subject: string;
  payload: Record<string, unknown>;
  /** The context of the event's process span: its fan_out span hangs under it, and its deliveries continue it. */
  trace?: Context;
}

/** The notification type of a subject (`seats.changed.<id>` → `seats.changed`); undefined for events nobody is notified about. */
export function eventTypeOf(subject: string): EventType | undefined {
  const type = subject.split(".").slice(0, -1).join(".");
  return (EVENT_TYPES as readonly string[]).includes(type) ? (type as EventType) : undefined;
}

type Facts = store.EventFacts;

const str = (value: unknown): string | undefined => (typeof value === "string" && value !== "" ? value : undefined);

/** The ids an event is about, and so the subscription targets it reaches. */
export function factsOf(type: EventType, payload: Record<string, unknown>): Facts {
  const version = Number(payload.aggregateVersion);
  const aggregateVersion = Number.isSafeInteger(version) ? version : undefined;
  if (type.startsWith("seats.")) {
    const monitorId = str(payload.monitorId);
    return { targets: monitorId ? [{ kind: "monitor", value: monitorId.toLowerCase() }] : [], monitorId, aggregateVersion };
  }
  if (type.startsWith("enrollment.")) {
    const courseId = str(payload.courseId);
    const studentId = str(payload.studentId);
    const targets: Target[] = [];
    if (courseId) targets.push({ kind: "course", value: courseId.toLowerCase() });
    if (studentId) targets.push({ kind: "student", value: studentId });
    return { targets, courseId, studentId, aggregateVersion };
  }
  const jobId = str(payload.jobId);
  return { targets: jobId ? [{ kind: "job", value: jobId.toLowerCase() }] : [], jobId, courseId: str(payload.courseId), aggregateVersion };
}

/**
 * One subscription per (channel, recipient): several subscriptions of one address reaching the same
 * event make one message. A student-filter match wins, so the student reads "you".
 */
export function recipientsOf(subscriptions: SubscriptionRow[]): SubscriptionRow[] {
  const chosen = new Map<string, SubscriptionRow>();
  for (const subscription of subscriptions) {
    const key = `${subscription.channel} ${subscription.address}`;
    const current = chosen.get(key);
    if (!current || (subscription.filter_kind === "student" && current.filter_kind !== "student")) chosen.set(key, subscription);
  }
  return [...chosen.values()];
}

type SeatsJson = { open?: number } | undefined;

async function insertSeatEmail(tx: Tx, settings: FanOutSettings, base: store.NewDelivery, event: Record<string, unknown>, extras: PayloadExtras): Promise<void> {
  const key = `${base.monitorId}|${base.recipient}`;
  const now = Date.now();
  let due = new Date(now);
  let merged = 1;
  let previous = event.previous as SeatsJson;
  const { row: last, busy } = await store.latestCoalescible(tx, key);
  let fold: string | undefined;
  if (last && last.status === "PENDING" && !busy) {
    // An email of this window has not gone yet: this one replaces it, keeping its due time and the
    // value the recipient last heard about as "before".
    fold = last.id;
    const lastPayload = last.payload as { event?: { previous?: SeatsJson }; merged?: number };
    previous = lastPayload.event?.previous;
    merged = (lastPayload.merged ?? 1) + 1;
    due = new Date(Math.max(now, last.next_attempt_at!.getTime()));
  } else if (last && (busy || last.status === "SENT")) {
    const lastSent = busy ? now : last.sent_at!.getTime();
    if (now - lastSent < settings.coalesceMs) due = new Date(lastSent + settings.coalesceMs);
  }
  const mergedEvent = { ...event, previous };
  const payload = { event: mergedEvent, ...extras, merged };
  const subject = renderEventMessage("seats.changed", payload).subject;
  const noNetChange = fold !== undefined && previous?.open !== undefined && previous.open === (event.current as SeatsJson)?.open;
  await store.insertDelivery(tx, {
    ...base,
    subject,
    payload,
    nextAttemptAt: due,
    coalesceKey: key,
    ...(noNetChange ? { status: "SUPPRESSED" as const, lastError: "no net change since the last email: the seats went back to what it said" } : {}),
  });
  if (fold) await store.markCoalesced(tx, fold, base.id);
}

const tracer = trace.getTracer("coursemesh");

/** The `traceparent` of an event's process span, kept with its deliveries so the sender continues that trace. */
const traceparentOf = (event: IncomingEvent): string | null => (event.trace ? (injectTraceContext({}, event.trace).traceparent ?? null) : null);

/**
 * Writes the deliveries of a batch of events, in order; returns the channels written to (for waking
 * the sender). Each event gets a `notifier.fan_out` span under its process span. A Postgres data
 * exception (SQLSTATE class 22, e.g. a NUL character in an event's text) fails the same way every
 * time, so it is a PoisonEventError: the consumer isolates the event and dead-letters it at once.
 */
export async function fanOut(tx: Tx, settings: FanOutSettings, events: IncomingEvent[]): Promise<Set<ChannelName>> {
  try {
    return await writeDeliveries(tx, settings, events);
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (typeof code === "string" && code.startsWith("22")) throw new PoisonEventError(`the event cannot be stored: ${(error as Error).message}`);
    throw error;
  }
}

async function writeDeliveries(tx: Tx, settings: FanOutSettings, events: IncomingEvent[]): Promise<Set<ChannelName>> {
  const channels = new Set<ChannelName>();
  const plain: { event: IncomingEvent; type: EventType; span: Span }[] = [];
  const seatChanges: { event: IncomingEvent; type: EventType }[] = [];
  for (const event of events) {
    const type = eventTypeOf(event.subject);
    if (!type) continue;
    if (type === "seats.changed" && settings.coalesceMs > 0) seatChanges.push({ event, type });
    else plain.push({ event, type, span: tracer.startSpan("notifier.fan_out", { attributes: fanOutAttributes(event, type) }, event.trace) });
  }
  if (plain.length > 0) {
    // Every recipient gets these events as they are: one statement writes them all.
    const spans = plain.map((p) => p.span);
    try {
      const written = await store.insertEventDeliveries(
        tx,
        plain.map(({ event, type }) => {
          const render = (perspective: "student" | "course") => renderEventMessage(type, { event: event.payload, perspective }).subject;
          return {
            ...factsOf(type, event.payload),
            eventId: event.eventId,
            eventType: type,
            event: event.payload,
            subjects: { student: render("student"), other: render("course") },
            traceparent: traceparentOf(event),
          };
        }),
        unsubscribeLink(settings.publicUrl, ""),
      );
      const byEvent = new Map<string, Set<ChannelName>>();
      for (const { event_id, channel } of written) {
        channels.add(channel);
        byEvent.set(event_id, (byEvent.get(event_id) ?? new Set<ChannelName>()).add(channel));
      }
      for (const { event, span } of plain) span.setAttribute("coursemesh.notifier.channels", [...(byEvent.get(event.eventId) ?? [])].sort());
    } catch (error) {
      for (const span of spans) recordError(span, error);
      throw error;
    } finally {
      for (const span of spans) span.end();
    }
  }
  // Coalescing reads what the previous seat email of a (monitor, recipient) became: one event at a
  // time, in order.
  for (const { event, type } of seatChanges) {
    await withSpan("notifier.fan_out", { parent: event.trace, attributes: fanOutAttributes(event, type) }, async (span) => {
      const written = await fanOutSeatChange(tx, settings, event, factsOf(type, event.payload), traceparentOf(event));
      for (const channel of written) channels.add(channel);
      span.setAttribute("coursemesh.notifier.channels", [...written].sort());
    });
  }
  return channels;
}

function fanOutAttributes(event: IncomingEvent, type: EventType) {
  return { "coursemesh.notifier.event_type": type, "coursemesh.event.id": event.eventId };
}

/** Seat changes: email goes through the coalescing window per (monitor, recipient); webhooks get every change. */
async function fanOutSeatChange(tx: Tx, settings: FanOutSettings, event: IncomingEvent, facts: Facts, traceparent: string | null): Promise<Set<ChannelName>> {
  const channels = new Set<ChannelName>();
  const recipients = recipientsOf(await store.activeSubscriptionsFor(tx, facts.targets));
  for (const subscription of recipients) {
    channels.add(subscription.channel);
    const extras: PayloadExtras = {
      perspective: subscription.filter_kind === "student" ? "student" : "course",
      unsubscribe_url: unsubscribeLink(settings.publicUrl, subscription.unsubscribe_token),
    };
    const base: store.NewDelivery = {
      id: Bun.randomUUIDv7(),
      eventId: event.eventId,
      eventType: "seats.changed",
      subscriptionId: subscription.id,
      owner: subscription.owner,
      channel: subscription.channel,
      recipient: subscription.address,
      monitorId: facts.monitorId,
      aggregateVersion: facts.aggregateVersion,
      subject: "",
      payload: {},
      nextAttemptAt: new Date(),
      traceparent,
    };
    if (subscription.channel === "EMAIL") {
      await insertSeatEmail(tx, settings, base, event.payload, extras);
      continue;
    }
    const payload = { event: event.payload, ...extras };
    await store.insertDelivery(tx, { ...base, subject: renderEventMessage("seats.changed", payload).subject, payload });
  }
  return channels;
}
