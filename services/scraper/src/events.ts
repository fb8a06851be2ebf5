/**
 * The scraper's events (coursemesh.events.v1 on the SEATS stream): `seats.changed.<monitor_id>` and
 * `seats.health.<monitor_id>`. They carry the monitor's id, label, URL and seat counts — never the
 * addresses to notify, which only the notifier knows.
 */
import type { OutboxEvent } from "@coursemesh/shared/events/outbox.ts";
import { MonitorHealth, MonitorHealthChanged, Seats, SeatsChanged } from "@coursemesh/proto/coursemesh/events/v1/events";
import type { Health, MonitorRecord } from "./monitors.ts";
import type { SeatReading } from "./seats.ts";

const HEALTH: Record<Health, MonitorHealth> = {
  PENDING: MonitorHealth.MONITOR_HEALTH_PENDING,
  HEALTHY: MonitorHealth.MONITOR_HEALTH_HEALTHY,
  STALE: MonitorHealth.MONITOR_HEALTH_STALE,
  ERROR: MonitorHealth.MONITOR_HEALTH_ERROR,
};

function envelope(event: "changed" | "health", type: string, monitorId: string, version: number, payload: unknown, eventId?: string): OutboxEvent {
  return { subject: `seats.${event}.${monitorId}`, type, payload: payload as Record<string, unknown>, aggregateId: monitorId, aggregateVersion: version, eventId };
}

/** The events' Seats message for a reading. */
export function eventSeats(seats: SeatReading): Seats {
  return { open: seats.open, capacity: seats.capacity, waitlist: seats.waitlist, raw: seats.raw, parseError: seats.note ?? "" };
}

/** `seats.changed.<monitor_id>` for a seat change recorded at `version`, with the event_id the change keeps. */
export function seatsChangedEvent(
  monitor: Pick<MonitorRecord, "id" | "label" | "url">,
  change: { id: string; previous: SeatReading | null; current: SeatReading; observedAt: Date; version: number; eventId: string },
): OutboxEvent {
  const message = SeatsChanged.fromPartial({
    monitorId: monitor.id,
    aggregateVersion: change.version,
    label: monitor.label,
    url: monitor.url,
    previous: change.previous ? eventSeats(change.previous) : undefined,
    current: eventSeats(change.current),
    observedAt: change.observedAt,
    seatChangeId: change.id,
  });
  return envelope("changed", "coursemesh.events.v1.SeatsChanged", monitor.id, change.version, SeatsChanged.toJSON(message), change.eventId);
}

/** `seats.health.<monitor_id>` for a health transition at `version`. */
export function healthChangedEvent(
  monitor: Pick<MonitorRecord, "id" | "label" | "url" | "lastError" | "consecutiveFailures" | "lastSuccessAt">,
  transition: { previous: Health; current: Health; version: number },
): OutboxEvent {
  const message = MonitorHealthChanged.fromPartial({
    monitorId: monitor.id,
    aggregateVersion: transition.version,
    label: monitor.label,
    url: monitor.url,
    previousHealth: HEALTH[transition.previous],
    health: HEALTH[transition.current],
    lastError: transition.current === "HEALTHY" ? "" : monitor.lastError,
    consecutiveFailures: monitor.consecutiveFailures,
    lastSuccessAt: monitor.lastSuccessAt ?? undefined,
  });
  return envelope("health", "coursemesh.events.v1.MonitorHealthChanged", monitor.id, transition.version, MonitorHealthChanged.toJSON(message));
}
