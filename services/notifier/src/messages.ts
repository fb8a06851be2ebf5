/**
 * What people read: subject, plain text and HTML of every notification, rendered from the event's
 * proto3 JSON kept in the delivery's payload. Pure functions, so content is tested without I/O.
 */
import {
  EnrollmentDecided,
  EnrollmentDropped,
  EnrollmentPromoted,
  EnrollmentStatus,
  IngestJobCompleted,
  IngestJobFailed,
  MonitorHealth,
  MonitorHealthChanged,
  PromotionCause,
  SeatsChanged,
  type Seats,
} from "@coursemesh/proto/coursemesh/events/v1/events";

/** A rendered notification. */
export interface Message {
  subject: string;
  text: string;
  html: string;
}

/** What a delivery's payload holds besides the event (all optional). */
export interface PayloadExtras {
  /** Whose point of view: the student it is about ("you") or a course watcher (third person). */
  perspective?: "student" | "course";
  unsubscribe_url?: string;
  /** Seat readings merged into this email by coalescing (1 = none merged). */
  merged?: number;
}

/** Event types the notifier turns into notifications. */
export const EVENT_TYPES = [
  "seats.changed",
  "seats.health",
  "enrollment.decided",
  "enrollment.promoted",
  "enrollment.dropped",
  "ingest.job.completed",
  "ingest.job.failed",
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

/** Escapes text for HTML bodies and attributes. */
export const escapeHtml = (value: string) =>
  value.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll('"', "&quot;").replaceAll("'", "&#39;");

// Subjects are one line: event text comes from other services and web pages.
const oneLine = (value: string) => value.replace(/[\r\n\t]+/g, " ").trim();

function when(date: Date | undefined): string {
  return date ? date.toUTCString().replace("GMT", "UTC") : "an unknown time";
}

function seatCount(seats: Seats | undefined): string {
  if (!seats) return "unknown";
  if (seats.open === undefined) return seats.raw ? `"${oneLine(seats.raw)}"` : "unknown";
  return seats.capacity !== undefined ? `${seats.open} of ${seats.capacity}` : `${seats.open}`;
}

/** The headline of a seat change: open, full again, or changed. */
export function seatHeadline(previous: Seats | undefined, current: Seats | undefined): string {
  const before = previous?.open;
  const now = current?.open;
  if (now !== undefined && now > 0 && (before === undefined || before === 0)) return "Seats open";
  if (now === 0 && before !== undefined && before > 0) return "Section full again";
  if (now === 0) return "Section full";
  return "Seats changed";
}

function seatChangeSubject(event: SeatsChanged): string {
  const label = oneLine(event.label) || event.url;
  const headline = seatHeadline(event.previous, event.current);
  const change = event.previous?.open !== undefined && event.current?.open !== undefined
    ? `${event.previous.open} → ${seatCount(event.current)}`
    : event.previous
      ? `${seatCount(event.previous)} → ${seatCount(event.current)}`
      : seatCount(event.current);
  return `${headline}: ${label} — ${change}`;
}

interface Body {
  lines: string[];
  link?: { label: string; url: string };
  footer: string;
}

function compose(subject: string, body: Body, extras: PayloadExtras): Message {
  const footer = extras.unsubscribe_url ? `${body.footer}\nUnsubscribe: ${extras.unsubscribe_url}` : body.footer;
  const text = [
    ...body.lines,
    ...(body.link ? ["", `${body.link.label}: ${body.link.url}`] : []),
    "",
    "—",
    footer,
  ].join("\n");
  const html = [
    "<!doctype html><html><body style=\"font-family: system-ui, sans-serif; line-height: 1.5\">",
    `<h2 style="margin: 0 0 12px">${escapeHtml(subject)}</h2>`,
    ...body.lines.filter((l) => l !== "").map((line) => `<p style="margin: 4px 0">${escapeHtml(line)}</p>`),
    body.link ? `<p><a href="${escapeHtml(body.link.url)}">${escapeHtml(body.link.label)}</a></p>` : "",
    `<hr><p style="color: #666; font-size: 12px">${escapeHtml(body.footer)}${
      extras.unsubscribe_url ? ` <a href="${escapeHtml(extras.unsubscribe_url)}">Unsubscribe</a>` : ""
    }</p>`,
    "</body></html>",
  ].join("\n");
  return { subject, text, html };
}

function seatsChangedMessage(event: SeatsChanged, extras: PayloadExtras): Message {
  const subject = seatChangeSubject(event);
  const label = oneLine(event.label) || "this section";
  const lines = [`${seatHeadline(event.previous, event.current)} in ${label}: ${event.previous ? `${seatCount(event.previous)} → ` : ""}${seatCount(event.current)} seats open.`];
  if (event.current?.waitlist !== undefined) lines.push(`Waitlist: ${event.current.waitlist}.`);
  if (event.current?.raw) lines.push(`The page said "${oneLine(event.current.raw)}" at ${when(event.observedAt)}.`);
  else lines.push(`Seen at ${when(event.observedAt)}.`);
  if (event.current?.parseError) lines.push(`The seat text could not be read as counts (${oneLine(event.current.parseError)}); check the page.`);
  if ((extras.merged ?? 1) > 1) lines.push(`${extras.merged} changes within a few minutes are combined in this email; it shows the latest.`);
  return compose(subject, { lines, link: event.url ? { label: "Registration page", url: event.url } : undefined, footer: "You get this because you subscribed to seat changes of this section on coursemesh." }, extras);
}

const HEALTH_WORDS: Record<number, string> = {
  [MonitorHealth.MONITOR_HEALTH_HEALTHY]: "healthy",
  [MonitorHealth.MONITOR_HEALTH_STALE]: "stale",
  [MonitorHealth.MONITOR_HEALTH_ERROR]: "failing",
  [MonitorHealth.MONITOR_HEALTH_PENDING]: "waiting for its first check",
};

function healthMessage(event: MonitorHealthChanged, extras: PayloadExtras): Message {
  const label = oneLine(event.label) || event.url;
  const subject =
    event.health === MonitorHealth.MONITOR_HEALTH_HEALTHY
      ? `Monitor healthy again: ${label}`
      : event.health === MonitorHealth.MONITOR_HEALTH_STALE
        ? `Monitor is stale: ${label} — no good check lately`
        : `Monitor needs attention: ${label} is ${HEALTH_WORDS[event.health] ?? "unwell"}`;
  const lines = [`The monitor for ${label} went from ${HEALTH_WORDS[event.previousHealth] ?? "unknown"} to ${HEALTH_WORDS[event.health] ?? "unknown"}.`];
  if (event.lastError) lines.push(`Last error: ${oneLine(event.lastError)}`);
  if (event.consecutiveFailures > 0) lines.push(`Failed checks in a row: ${event.consecutiveFailures}.`);
  lines.push(event.lastSuccessAt ? `Last good check: ${when(event.lastSuccessAt)}.` : "There has been no good check yet.");
  if (event.health !== MonitorHealth.MONITOR_HEALTH_HEALTHY) lines.push("Until it recovers, seat changes may be missed.");
  return compose(subject, { lines, link: event.url ? { label: "Monitored page", url: event.url } : undefined, footer: "You get this because you subscribed to this monitor on coursemesh." }, extras);
}

function courseName(code: string, title: string): string {
  const c = oneLine(code);
  const t = oneLine(title);
  return c && t ? `${c} (${t})` : c || t || "the course";
}

const REASON_WORDS: Record<string, string> = {
  COURSE_FULL: "the course is full",
  WAITLIST_FULL: "the course and its waitlist are full",
  ALREADY_ENROLLED: "you are already enrolled",
};

function reasonWords(reason: string): string {
  return REASON_WORDS[reason] ?? reason.toLowerCase().replaceAll("_", " ");
}

function seatsLine(seatsTaken: number | undefined, capacity: number | undefined): string[] {
  return seatsTaken !== undefined && capacity !== undefined ? [`Seats taken: ${seatsTaken} of ${capacity}.`] : [];
}

function decidedMessage(event: EnrollmentDecided, extras: PayloadExtras): Message {
  const you = extras.perspective !== "course";
  const who = you ? "You" : `Student ${event.studentId}`;
  const code = oneLine(event.courseCode) || event.courseId;
  const name = courseName(event.courseCode, event.courseTitle);
  let subject: string;
  let headline: string;
  switch (event.status) {
    case EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED:
      subject = you ? `Enrolled: ${code}` : `Enrolled: ${event.studentId} in ${code}`;
      headline = `${who} ${you ? "are" : "is"} enrolled in ${name}.`;
      break;
    case EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED: {
      const position = event.waitlistPosition !== undefined ? ` — position ${event.waitlistPosition}` : "";
      subject = you ? `Waitlisted: ${code}${position}` : `Waitlisted: ${event.studentId} in ${code}${position}`;
      headline = `${who} ${you ? "are" : "is"} on the waitlist of ${name}${event.waitlistPosition !== undefined ? ` at position ${event.waitlistPosition}` : ""}${event.reason ? ` (${reasonWords(event.reason)})` : ""}.`;
      break;
    }
    default:
      subject = you ? `Not enrolled: ${code}` : `Not enrolled: ${event.studentId} in ${code}`;
      headline = `${who} could not be enrolled in ${name}${event.reason ? `: ${reasonWords(event.reason)}` : ""}.`;
  }
  const lines = [headline, ...seatsLine(event.seatsTaken, event.capacity)];
  if (event.status === EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED) lines.push("If a seat frees up, the first on the waitlist gets it and is told by email.");
  lines.push(`Decided at ${when(event.occurredAt)}. Request ${event.requestId}.`);
  return compose(subject, { lines, footer: you ? "You get this because you asked for your enrollment outcomes on coursemesh." : "You get this because you watch enrollments in this course on coursemesh." }, extras);
}

function promotedMessage(event: EnrollmentPromoted, extras: PayloadExtras): Message {
  const you = extras.perspective !== "course";
  const code = oneLine(event.courseCode) || event.courseId;
  const cause = event.cause === PromotionCause.PROMOTION_CAUSE_CAPACITY_RAISE ? "the course's capacity was raised" : "another student dropped";
  const subject = you ? `You got a seat: ${code} (from the waitlist)` : `Promoted from the waitlist: ${event.studentId} in ${code}`;
  const lines = [
    `${you ? "You are" : `Student ${event.studentId} is`} now enrolled in ${courseName(event.courseCode, event.courseTitle)}: a seat opened because ${cause}.`,
    ...seatsLine(event.seatsTaken, event.capacity),
    `Promoted at ${when(event.occurredAt)}.`,
  ];
  return compose(subject, { lines, footer: you ? "You get this because you asked for your enrollment outcomes on coursemesh." : "You get this because you watch enrollments in this course on coursemesh." }, extras);
}

function droppedMessage(event: EnrollmentDropped, extras: PayloadExtras): Message {
  const you = extras.perspective !== "course";
  const code = oneLine(event.courseCode) || event.courseId;
  const place = event.previousStatus === EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED ? "waitlist place in" : "seat in";
  const subject = you ? `Dropped: ${code}` : `Dropped: ${event.studentId} from ${code}`;
  const lines = [
    `${you ? "You gave up your" : `Student ${event.studentId} gave up their`} ${place} ${courseName(event.courseCode, event.courseTitle)}.`,
    ...seatsLine(event.seatsTaken, event.capacity),
    ...(event.promotedStudentId && !you ? [`Student ${event.promotedStudentId} was promoted from the waitlist into the seat.`] : []),
    `Dropped at ${when(event.occurredAt)}.`,
  ];
  return compose(subject, { lines, footer: you ? "You get this because you asked for your enrollment outcomes on coursemesh." : "You get this because you watch enrollments in this course on coursemesh." }, extras);
}

function jobCompletedMessage(event: IngestJobCompleted, extras: PayloadExtras): Message {
  const title = oneLine(event.courseTitle) || "your course";
  const subject = `Course outline ready: ${title} — ${event.moduleCount} module${event.moduleCount === 1 ? "" : "s"}`;
  const lines = [
    `The outline of ${title} is ready: ${event.moduleCount} module${event.moduleCount === 1 ? "" : "s"} from ${event.documentCount} document${event.documentCount === 1 ? "" : "s"} (${event.pageCount} page${event.pageCount === 1 ? "" : "s"}).`,
    ...event.moduleTitles.slice(0, 50).map((t, i) => `${i + 1}. ${oneLine(t)}`),
    ...(event.moduleTitles.length > 50 ? [`… and ${event.moduleTitles.length - 50} more.`] : []),
    `Course id ${event.courseId}; job ${event.jobId}.`,
  ];
  return compose(subject, { lines, footer: "You get this because you asked to hear about this upload on coursemesh." }, extras);
}

function jobFailedMessage(event: IngestJobFailed, extras: PayloadExtras): Message {
  const title = oneLine(event.courseTitle) || "your course";
  const subject = `Course upload failed: ${title}`;
  const lines = [
    `coursemesh could not build the outline of ${title}: ${oneLine(event.error) || "an unknown error"}.`,
    `Attempts: ${event.attempts}. Job ${event.jobId}.`,
    "Fix the documents and upload them again, or retry the job.",
  ];
  return compose(subject, { lines, footer: "You get this because you asked to hear about this upload on coursemesh." }, extras);
}

/** Renders a notification from its event type and payload (`{ event, ...extras }`). */
export function renderEventMessage(eventType: string, payload: { event?: unknown } & PayloadExtras): Message {
  const event = payload.event ?? {};
  switch (eventType as EventType) {
    case "seats.changed":
      return seatsChangedMessage(SeatsChanged.fromJSON(event), payload);
    case "seats.health":
      return healthMessage(MonitorHealthChanged.fromJSON(event), payload);
    case "enrollment.decided":
      return decidedMessage(EnrollmentDecided.fromJSON(event), payload);
    case "enrollment.promoted":
      return promotedMessage(EnrollmentPromoted.fromJSON(event), payload);
    case "enrollment.dropped":
      return droppedMessage(EnrollmentDropped.fromJSON(event), payload);
    case "ingest.job.completed":
      return jobCompletedMessage(IngestJobCompleted.fromJSON(event), payload);
    case "ingest.job.failed":
      return jobFailedMessage(IngestJobFailed.fromJSON(event), payload);
    default:
      throw new Error(`no message for event type ${eventType}`);
  }
}

/** The confirmation email of a PENDING subscription (double opt-in). */
export function confirmationMessage(payload: { confirm_url?: unknown; owner?: unknown; about?: unknown; expires_at?: unknown }): Message {
  const subject = "Confirm your coursemesh notifications";
  return compose(
    subject,
    {
      lines: [
        `Someone signed in to coursemesh as "${String(payload.owner)}" asked to send this address ${String(payload.about)}.`,
        "Nothing is sent until you confirm. If this was not you, ignore this email.",
        `The link works until ${when(new Date(String(payload.expires_at)))}.`,
      ],
      link: { label: "Confirm", url: String(payload.confirm_url) },
      footer: "coursemesh sends notifications only to addresses whose owners confirmed them.",
    },
    {},
  );
}

/** The message SendTest sends. */
function testMessage(payload: { requested_by?: unknown }): Message {
  return compose(
    "coursemesh test notification",
    {
      lines: [`This is a test notification requested by "${String(payload.requested_by)}". Delivery works.`],
      footer: "You get this because someone tested coursemesh notifications with this address.",
    },
    {},
  );
}

/** Renders any delivery: an event notification, a confirmation or a test. */
export function renderDelivery(eventType: string, payload: Record<string, unknown>): Message {
  if (eventType === "subscription.confirm") return confirmationMessage(payload);
  if (eventType === "test") return testMessage(payload);
  return renderEventMessage(eventType, payload as { event?: unknown } & PayloadExtras);
}
