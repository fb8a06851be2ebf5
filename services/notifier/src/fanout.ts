/**
 * Fan-out: one event becomes one delivery row per subscribed recipient (unique per event, channel
 * and recipient), written in the consumer's transaction before the event is acked. Seat emails are
 * coalesced per (monitor, recipient): the first goes at once; later ones inside the window fold
 * into one trailing email, due at the window's end, carrying the latest value.
 */
import type { Tx } from "@coursemesh/shared/db";
import { currentTraceparent, withSpan } from "@coursemesh/shared/telemetry";
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

/** Writes the deliveries of one event; returns the channels it wrote to (for waking the sender). */
export async function fanOut(tx: Tx, settings: FanOutSettings, event: IncomingEvent): Promise<Set<ChannelName>> {
  const type = eventTypeOf(event.subject);
  if (!type) return new Set();
  // Deliveries hang under the consumer's process span (the sender continues it), not under this one.
  const traceparent = currentTraceparent() ?? null;
  return withSpan("notifier.fan_out", { attributes: { "coursemesh.notifier.event_type": type, "coursemesh.event.id": event.eventId } }, async (span) => {
    const channels = await writeDeliveries(tx, settings, event, type, traceparent);
    span.setAttribute("coursemesh.notifier.channels", [...channels].sort());
    return channels;
  });
}

async function writeDeliveries(tx: Tx, settings: FanOutSettings, event: IncomingEvent, type: EventType, traceparent: string | null): Promise<Set<ChannelName>> {
  const facts = factsOf(type, event.payload);
  if (type !== "seats.changed" || settings.coalesceMs === 0) {
    // Every recipient gets the event as it is: one statement writes them all.
    const render = (perspective: "student" | "course") => renderEventMessage(type, { event: event.payload, perspective }).subject;
    const channels = await store.insertEventDeliveries(tx, {
      ...facts,
      eventId: event.eventId,
      eventType: type,
      event: event.payload,
      subjects: { student: render("student"), other: render("course") },
      unsubscribeBase: unsubscribeLink(settings.publicUrl, ""),
      traceparent,
    });
    return new Set(channels);
  }
  return fanOutSeatChange(tx, settings, event, facts, traceparent);
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
