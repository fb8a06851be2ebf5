/**
 * The allocator's events (coursemesh.events.v1 on the ENROLLMENT stream), built from what a
 * transaction decided. They carry ids and public facts about the course, never personal data
 * beyond the student id the request was made with.
 */
import type { OutboxEvent } from "@coursemesh/shared/events/index.ts";
import {
  EnrollmentDecided,
  EnrollmentDropped,
  EnrollmentPromoted,
  EnrollmentStatus,
  PromotionCause,
} from "@coursemesh/proto/coursemesh/events/v1/events";
import type { DecidedStatus, LockedCourse, RequestStatus } from "./store.ts";

const EVENT_STATUS: Record<RequestStatus, EnrollmentStatus> = {
  PENDING: EnrollmentStatus.ENROLLMENT_STATUS_PENDING,
  ENROLLED: EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED,
  WAITLISTED: EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED,
  REJECTED: EnrollmentStatus.ENROLLMENT_STATUS_REJECTED,
  DROPPED: EnrollmentStatus.ENROLLMENT_STATUS_DROPPED,
};

/** The course as an event describes it: its facts and its counters after the change. */
export interface CourseAfterChange {
  course: LockedCourse;
  /** The course's aggregate_version after this change. */
  version: number;
  seatsTaken: number;
  capacity: number;
  occurredAt: Date;
}

function courseFields(at: CourseAfterChange) {
  return {
    occurredAt: at.occurredAt,
    courseId: at.course.id,
    aggregateVersion: at.version,
    courseCode: at.course.code,
    courseTitle: at.course.title,
    seatsTaken: at.seatsTaken,
    capacity: at.capacity,
  };
}

function envelope(kind: "decided" | "promoted" | "dropped", type: string, at: CourseAfterChange, payload: unknown): OutboxEvent {
  return {
    subject: `enrollment.${kind}.${at.course.id}`,
    type,
    payload: payload as Record<string, unknown>,
    aggregateId: at.course.id,
    aggregateVersion: at.version,
  };
}

/** `enrollment.decided.<course_id>`: a request left PENDING. */
export function decidedEvent(
  at: CourseAfterChange,
  request: { id: string; studentId: string; status: DecidedStatus; reason: string; waitlistPosition?: number },
): OutboxEvent {
  const message = EnrollmentDecided.fromPartial({
    ...courseFields(at),
    requestId: request.id,
    studentId: request.studentId,
    status: EVENT_STATUS[request.status],
    reason: request.reason,
    waitlistPosition: request.waitlistPosition,
  });
  return envelope("decided", "coursemesh.events.v1.EnrollmentDecided", at, EnrollmentDecided.toJSON(message));
}

/** `enrollment.promoted.<course_id>`: a waitlisted student got a seat. */
export function promotedEvent(at: CourseAfterChange, request: { id: string; studentId: string }, cause: "DROP" | "CAPACITY_RAISE"): OutboxEvent {
  const message = EnrollmentPromoted.fromPartial({
    ...courseFields(at),
    requestId: request.id,
    studentId: request.studentId,
    status: EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED,
    cause: cause === "DROP" ? PromotionCause.PROMOTION_CAUSE_DROP : PromotionCause.PROMOTION_CAUSE_CAPACITY_RAISE,
  });
  return envelope("promoted", "coursemesh.events.v1.EnrollmentPromoted", at, EnrollmentPromoted.toJSON(message));
}

/** `enrollment.dropped.<course_id>`: a student gave up a seat or a waitlist place. */
export function droppedEvent(
  at: CourseAfterChange,
  drop: { requestId: string; studentId: string; previousStatus: "ENROLLED" | "WAITLISTED"; promoted?: { id: string; studentId: string } },
): OutboxEvent {
  const message = EnrollmentDropped.fromPartial({
    ...courseFields(at),
    requestId: drop.requestId,
    studentId: drop.studentId,
    status: EnrollmentStatus.ENROLLMENT_STATUS_DROPPED,
    previousStatus: EVENT_STATUS[drop.previousStatus],
    promotedStudentId: drop.promoted?.studentId ?? "",
    promotedRequestId: drop.promoted?.id ?? "",
  });
  return envelope("dropped", "coursemesh.events.v1.EnrollmentDropped", at, EnrollmentDropped.toJSON(message));
}
