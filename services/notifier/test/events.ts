/** Event payloads for tests, built from the coursemesh.events.v1 messages as the producers build them. */
import {
  EnrollmentDecided,
  EnrollmentPromoted,
  EnrollmentStatus,
  IngestJobCompleted,
  IngestJobFailed,
  MonitorHealth,
  MonitorHealthChanged,
  PromotionCause,
  SeatsChanged,
} from "@coursemesh/proto/coursemesh/events/v1/events";
import type { MessageFns } from "@coursemesh/proto/coursemesh/events/v1/events";
import type { NotifierWorld } from "./helpers.ts";

export const seats = (open: number, capacity = 30) => ({ open, capacity, raw: `Seats: ${open}/${capacity}` });

const COURSE = { courseCode: "CMPUT 201 LEC A1", courseTitle: "Practical Programming Methodology" };
const MONITOR = { label: "CMPUT 201 LEC A1", url: "https://registrar.example.edu/classes/cmput201" };

/** Publishes one event built from `fields` as its producer would: proto3 JSON, subject `<domain>.<event>.<aggregate id>`. */
async function publishMessage<T>(
  world: NotifierWorld,
  message: MessageFns<T> & { $type?: string },
  typeName: string,
  subjectBase: string,
  aggregate: { id: string; version: number },
  fields: Record<string, unknown>,
): Promise<string> {
  const eventId = Bun.randomUUIDv7();
  const payload = message.toJSON(message.fromPartial({ eventId, occurredAt: new Date(), aggregateVersion: aggregate.version, ...fields } as never)) as Record<string, unknown>;
  await world.publish(`${subjectBase}.${aggregate.id}`, `coursemesh.events.v1.${typeName}`, payload, aggregate);
  return eventId;
}

/** Publishes a SeatsChanged for `monitorId` at `version`. */
export function publishSeatsChanged(world: NotifierWorld, monitorId: string, version: number, previous: number | undefined, current: number) {
  return publishMessage(world, SeatsChanged, "SeatsChanged", "seats.changed", { id: monitorId, version }, {
    monitorId,
    ...MONITOR,
    previous: previous === undefined ? undefined : seats(previous),
    current: seats(current),
    observedAt: new Date("2026-09-01T15:04:05Z"),
    seatChangeId: Bun.randomUUIDv7(),
  });
}

/** Publishes a MonitorHealthChanged (HEALTHY → ERROR). */
export function publishHealthError(world: NotifierWorld, monitorId: string, version: number) {
  return publishMessage(world, MonitorHealthChanged, "MonitorHealthChanged", "seats.health", { id: monitorId, version }, {
    monitorId,
    ...MONITOR,
    previousHealth: MonitorHealth.MONITOR_HEALTH_HEALTHY,
    health: MonitorHealth.MONITOR_HEALTH_ERROR,
    lastError: "the page did not show .seatText within 15 s",
    consecutiveFailures: 3,
    lastSuccessAt: new Date("2026-09-01T15:00:00Z"),
  });
}

/** Publishes an EnrollmentDecided. */
export function publishDecided(world: NotifierWorld, courseId: string, version: number, studentId: string, status: EnrollmentStatus, waitlistPosition?: number) {
  return publishMessage(world, EnrollmentDecided, "EnrollmentDecided", "enrollment.decided", { id: courseId, version }, {
    courseId,
    ...COURSE,
    requestId: Bun.randomUUIDv7(),
    studentId,
    status,
    reason: status === EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED ? "COURSE_FULL" : "",
    waitlistPosition,
    seatsTaken: 30,
    capacity: 30,
  });
}

/** Publishes an EnrollmentPromoted (a drop freed the seat). */
export function publishPromoted(world: NotifierWorld, courseId: string, version: number, studentId: string) {
  return publishMessage(world, EnrollmentPromoted, "EnrollmentPromoted", "enrollment.promoted", { id: courseId, version }, {
    courseId,
    ...COURSE,
    requestId: Bun.randomUUIDv7(),
    studentId,
    status: EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED,
    cause: PromotionCause.PROMOTION_CAUSE_DROP,
    seatsTaken: 30,
    capacity: 30,
  });
}

/** Publishes an IngestJobCompleted. */
export function publishJobCompleted(world: NotifierWorld, jobId: string) {
  return publishMessage(world, IngestJobCompleted, "IngestJobCompleted", "ingest.job.completed", { id: jobId, version: 3 }, {
    jobId,
    courseId: Bun.randomUUIDv7(),
    courseTitle: "Linear Algebra I",
    moduleCount: 3,
    moduleTitles: ["Vectors", "Matrices", "Eigenvalues"],
    pageCount: 42,
    documentCount: 2,
    attempts: 1,
  });
}

/** Publishes an IngestJobFailed. */
export function publishJobFailed(world: NotifierWorld, jobId: string) {
  return publishMessage(world, IngestJobFailed, "IngestJobFailed", "ingest.job.failed", { id: jobId, version: 3 }, {
    jobId,
    courseTitle: "Linear Algebra I",
    error: "syllabus.pdf is encrypted; upload it without a password",
    errorReason: "PDF_ENCRYPTED",
    attempts: 1,
  });
}

export { EnrollmentStatus };
