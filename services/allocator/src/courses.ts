/**
 * Courses: creation, reads, and changes of title and capacity. A capacity raise promotes waitlist
 * heads in the same transaction that raises it.
 */
import { transaction, type Sql } from "@coursemesh/shared/db.ts";
import { enqueueMany } from "@coursemesh/shared/events/index.ts";
import { alreadyExists, failedPrecondition, notFound } from "@coursemesh/shared/grpc/errors.ts";
import type { ChangeFeed } from "./changes.ts";
import { promotedEvent } from "./events.ts";
import { recordPromotions } from "./metrics.ts";
import {
  insertCourse,
  lockCourse,
  promoteWaitlistHeads,
  selectCourse,
  selectCourseCode,
  selectCourses,
  updateCourseRow,
  type CourseRecord,
} from "./store.ts";

/** Thrown when a course id names no course. */
export function courseNotFound(id: string) {
  return notFound("COURSE_NOT_FOUND", `no course with id ${id}`, { metadata: { course_id: id } });
}

/**
 * Course codes by id for the accept path, which must not query the course for every request.
 * Codes never change and courses are never deleted, so a hit is good forever; misses are not kept.
 */
export class CourseDirectory {
  private readonly codes = new Map<string, string>();

  constructor(private readonly sql: Sql) {}

  /** The course's code, or null when there is no such course. */
  async code(id: string): Promise<string | null> {
    const cached = this.codes.get(id);
    if (cached !== undefined) return cached;
    const code = await selectCourseCode(this.sql, id);
    if (code !== null) this.codes.set(id, code);
    return code;
  }
}

/** Creates a course; a taken code is ALREADY_EXISTS. */
export async function createCourse(sql: Sql, input: { code: string; title: string; capacity: number }): Promise<CourseRecord> {
  const course = await insertCourse(sql, { id: Bun.randomUUIDv7(), ...input });
  if (!course) throw alreadyExists("COURSE_CODE_TAKEN", `a course with code "${input.code}" already exists`, { metadata: { code: input.code } });
  return course;
}

/** A course with its live counters; NOT_FOUND when there is none. */
export async function getCourse(sql: Sql, id: string): Promise<CourseRecord> {
  const course = await selectCourse(sql, id);
  if (!course) throw courseNotFound(id);
  return course;
}

/** A page of courses in code order. */
export function listCourses(sql: Sql, afterCode: string | null, limit: number): Promise<CourseRecord[]> {
  return selectCourses(sql, afterCode, limit);
}

export interface CourseUpdate {
  id: string;
  title?: string;
  capacity?: number;
}

/**
 * Changes a course's title and/or capacity under its lock. A capacity below the seats taken is
 * FAILED_PRECONDITION; a raise promotes as many waitlist heads as it frees seats, with their
 * events, in the same transaction.
 */
export async function updateCourse(sql: Sql, feed: ChangeFeed, update: CourseUpdate): Promise<{ course: CourseRecord; promoted: { id: string; studentId: string }[] }> {
  const result = await transaction(sql, "allocator.update_course", async (tx) => {
    const course = await lockCourse(tx, update.id);
    if (!course) throw courseNotFound(update.id);
    const capacity = update.capacity ?? course.capacity;
    if (capacity < course.seatsTaken) {
      throw failedPrecondition(
        "CAPACITY_BELOW_SEATS_TAKEN",
        `capacity ${capacity} is below the ${course.seatsTaken} seats already taken; drop students first or choose at least ${course.seatsTaken}`,
        { metadata: { seats_taken: String(course.seatsTaken), capacity: String(capacity) } },
      );
    }
    const title = update.title ?? course.title;
    const promoted = await promoteWaitlistHeads(tx, course.id, Math.min(capacity - course.seatsTaken, course.waitlistLength));
    const occurredAt = new Date();
    const described = { ...course, title };
    const events = promoted.map((request, index) =>
      promotedEvent(
        { course: described, version: course.version + index + 1, seatsTaken: course.seatsTaken + index + 1, capacity, occurredAt },
        request,
        "CAPACITY_RAISE",
      ),
    );
    await enqueueMany(tx, events);
    await updateCourseRow(tx, {
      id: course.id,
      title,
      capacity,
      seatsTaken: course.seatsTaken + promoted.length,
      waitlistLength: course.waitlistLength - promoted.length,
      version: course.version + promoted.length,
    });
    return { course: (await selectCourse(tx, course.id))!, promoted };
  });
  recordPromotions(result.promoted.length);
  feed.changed(update.id, result.promoted.length ? undefined : []);
  return result;
}
