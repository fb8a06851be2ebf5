/**
 * The waitlist and seat holders: drops (which promote the waitlist head in the same transaction)
 * and the course's lists, with positions computed when read.
 */
import { transaction, type Sql } from "@coursemesh/shared/db.ts";
import { enqueueMany } from "@coursemesh/shared/events/index.ts";
import { alreadyExists, failedPrecondition, notFound } from "@coursemesh/shared/grpc/errors.ts";
import type { ChangeFeed } from "./changes.ts";
import { courseNotFound } from "./courses.ts";
import { droppedEvent, promotedEvent } from "./events.ts";
import { enrollmentRequests, recordPromotions } from "./metrics.ts";
import {
  hasPendingRequest,
  insertDrop,
  lockCourse,
  markDropped,
  promoteWaitlistHeads,
  selectCourseCode,
  selectDrop,
  selectEnrolled,
  selectLiveRequest,
  selectWaitlist,
  updateCourseRow,
  type DropRecord,
  type PageKey,
  type RequestRecord,
} from "./store.ts";

export interface DropInput {
  studentId: string;
  courseId: string;
  idempotencyKey: string;
}

function dropKeyReused(key: string) {
  return alreadyExists("IDEMPOTENCY_KEY_REUSED", `idempotency key "${key}" was already used to drop another enrollment; use a new key`, {
    metadata: { idempotency_key: key },
  });
}

function sameDrop(drop: DropRecord, input: DropInput): boolean {
  return drop.studentId === input.studentId && drop.courseId === input.courseId;
}

/**
 * Gives up the student's seat or waitlist place. A freed seat goes to the waitlist head in the same
 * transaction, with both events. A retry with the same key returns the stored answer.
 */
export async function dropEnrollment(sql: Sql, feed: ChangeFeed, input: DropInput): Promise<DropRecord> {
  let outcome: { drop: DropRecord; repeated: boolean };
  try {
    outcome = await transaction(sql, "allocator.drop", async (tx) => {
      const course = await lockCourse(tx, input.courseId);
      if (!course) throw courseNotFound(input.courseId);
      const earlier = await selectDrop(tx, input.idempotencyKey);
      if (earlier) {
        if (!sameDrop(earlier, input)) throw dropKeyReused(input.idempotencyKey);
        return { drop: earlier, repeated: true };
      }
      const live = await selectLiveRequest(tx, input.courseId, input.studentId);
      if (!live) {
        if (await hasPendingRequest(tx, input.courseId, input.studentId)) {
          throw failedPrecondition("REQUEST_PENDING", `student ${input.studentId}'s request for ${course.code} is not decided yet; drop it once it is`, {
            metadata: { course_id: input.courseId, student_id: input.studentId },
          });
        }
        throw notFound("ENROLLMENT_NOT_FOUND", `student ${input.studentId} neither holds a seat nor waits in ${course.code}`, {
          metadata: { course_id: input.courseId, student_id: input.studentId },
        });
      }
      const droppedAt = await markDropped(tx, live.id);
      let seatsTaken = course.seatsTaken;
      let waitlistLength = course.waitlistLength;
      if (live.status === "ENROLLED") seatsTaken -= 1;
      else waitlistLength -= 1;
      const droppedState = { course, version: course.version + 1, seatsTaken, capacity: course.capacity, occurredAt: droppedAt };
      const [promoted] = live.status === "ENROLLED" ? await promoteWaitlistHeads(tx, course.id, Math.min(1, waitlistLength)) : [];
      const events = [droppedEvent(droppedState, { requestId: live.id, studentId: input.studentId, previousStatus: live.status, promoted })];
      if (promoted) {
        seatsTaken += 1;
        waitlistLength -= 1;
        events.push(promotedEvent({ ...droppedState, version: course.version + 2, seatsTaken, occurredAt: promoted.enrolledAt }, promoted, "DROP"));
      }
      await enqueueMany(tx, events);
      await updateCourseRow(tx, { ...course, seatsTaken, waitlistLength, version: course.version + events.length });
      const drop: DropRecord = {
        idempotencyKey: input.idempotencyKey,
        requestId: live.id,
        courseId: input.courseId,
        studentId: input.studentId,
        previousStatus: live.status,
        promotedRequestId: promoted?.id ?? null,
        promotedStudentId: promoted?.studentId ?? null,
        droppedAt,
      };
      await insertDrop(tx, drop);
      return { drop, repeated: false };
    });
  } catch (error) {
    // The same key used at once for another course: the other transaction's row answers it.
    if ((error as { code?: string }).code !== "23505") throw error;
    const earlier = await selectDrop(sql, input.idempotencyKey);
    if (!earlier) throw error;
    if (!sameDrop(earlier, input)) throw dropKeyReused(input.idempotencyKey);
    return earlier;
  }
  if (!outcome.repeated) {
    enrollmentRequests.inc({ status: "DROPPED" });
    recordPromotions(outcome.drop.promotedRequestId ? 1 : 0);
    feed.changed(input.courseId);
  }
  return outcome.drop;
}

export interface Page<T> {
  items: T[];
  next: PageKey | null;
}

/** The first `limit` of `rows` (read as limit + 1) and the key after which the next page starts. */
export function pageOf<T extends { pageKey: PageKey }>(rows: T[], limit: number): Page<T> {
  return { items: rows.slice(0, limit), next: rows.length > limit ? rows[limit - 1]!.pageKey : null };
}

async function requireCourse(sql: Sql, courseId: string): Promise<void> {
  if ((await selectCourseCode(sql, courseId)) === null) throw courseNotFound(courseId);
}

/** A page of a course's seat holders, in the order they got their seat. */
export async function listEnrollments(sql: Sql, courseId: string, after: PageKey | null, limit: number): Promise<Page<RequestRecord>> {
  await requireCourse(sql, courseId);
  return pageOf(await selectEnrolled(sql, courseId, after, limit + 1), limit);
}

/** A page of a course's waitlist in score order, positions computed now. */
export async function listWaitlist(sql: Sql, courseId: string, after: PageKey | null, limit: number): Promise<Page<RequestRecord>> {
  await requireCourse(sql, courseId);
  return pageOf(await selectWaitlist(sql, courseId, after, limit + 1), limit);
}
