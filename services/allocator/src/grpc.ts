/**
 * coursemesh.allocator.v1.EnrollmentService: thin handlers that check input and the caller's
 * rights, call the domain modules and map their records to proto messages.
 */
import {
  EnrollmentServiceService,
  EnrollmentStatus,
  type Course,
  type EnrollmentServiceServer,
  type EnrollResponse,
} from "@coursemesh/proto/coursemesh/allocator/v1/allocator";
import { hasRole, type Principal } from "@coursemesh/shared/auth.ts";
import type { Sql } from "@coursemesh/shared/db.ts";
import { invalidArgument, permissionDenied } from "@coursemesh/shared/grpc/errors.ts";
import { defineService, type CallContext } from "@coursemesh/shared/grpc/server.ts";
import { currentTraceparent } from "@coursemesh/shared/telemetry.ts";
import type { ChangeFeed, RequestReader } from "./changes.ts";
import { createCourse, getCourse, listCourses, updateCourse } from "./courses.ts";
import type { Acceptor, DecisionWaits } from "./enroll.ts";
import { getRequest, listStudentRequests, watchRequest, type Viewer } from "./requests.ts";
import type { CourseRecord, RequestRecord, RequestStatus } from "./store.ts";
import {
  courseCodeAfter,
  pageKeyAfter,
  pageSize,
  pageToken,
  requireCapacity,
  requireCourseCode,
  requireId,
  requireIdempotencyKey,
  requirePriority,
  requireStudentId,
  requireTitle,
} from "./validate.ts";
import { dropEnrollment, listEnrollments, listWaitlist } from "./waitlist.ts";

export interface EnrollmentServiceDeps {
  sql: Sql;
  feed: ChangeFeed;
  reader: RequestReader;
  acceptor: Acceptor;
  waits: DecisionWaits;
  /** How long Enroll with wait=true and no deadline waits. */
  maxWaitMs: number;
  /** Aborts when the process stops taking work, ending watches. */
  stopping: AbortSignal;
}

const STATUS: Record<RequestStatus, EnrollmentStatus> = {
  PENDING: EnrollmentStatus.ENROLLMENT_STATUS_PENDING,
  ENROLLED: EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED,
  WAITLISTED: EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED,
  REJECTED: EnrollmentStatus.ENROLLMENT_STATUS_REJECTED,
  DROPPED: EnrollmentStatus.ENROLLMENT_STATUS_DROPPED,
};

function ordinal(n: number): string {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : (["th", "st", "nd", "rd"][n % 10] ?? "th");
  return `${n}${suffix}`;
}

function describe(record: RequestRecord): string {
  const code = record.courseCode;
  switch (record.status) {
    case "PENDING":
      return record.queuePosition ? `accepted; ${ordinal(record.queuePosition)} in the queue for ${code}` : `accepted; waiting for a decision on ${code}`;
    case "ENROLLED":
      return `enrolled in ${code}`;
    case "WAITLISTED":
      return record.waitlistPosition ? `no seat free in ${code}; ${ordinal(record.waitlistPosition)} on the waitlist` : `no seat free in ${code}; on the waitlist`;
    case "REJECTED":
      if (record.reason === "ALREADY_ENROLLED") return `refused: the student already holds a seat in ${code}`;
      if (record.reason === "ALREADY_WAITLISTED") return `refused: the student is already on the waitlist of ${code}`;
      if (record.reason === "ALREADY_PENDING") return `refused: the student already has an undecided request for ${code}`;
      return `refused (${record.reason})`;
    case "DROPPED":
      return `dropped from ${code}`;
  }
}

/** The request as the API shows it (Enrollment and EnrollResponse share their fields). */
function toEnrollment(record: RequestRecord): EnrollResponse {
  return {
    requestId: record.id,
    status: STATUS[record.status],
    reason: record.reason,
    queuePosition: record.status === "PENDING" ? record.queuePosition : undefined,
    waitlistPosition: record.status === "WAITLISTED" ? record.waitlistPosition : undefined,
    courseId: record.courseId,
    studentId: record.studentId,
    message: describe(record),
    idempotencyKey: record.idempotencyKey,
    priority: record.priority,
    courseCode: record.courseCode,
    createdAt: record.createdAt,
    decidedAt: record.decidedAt,
    enrolledAt: record.enrolledAt,
    droppedAt: record.droppedAt,
    updatedAt: record.updatedAt,
  };
}

function toCourse(record: CourseRecord): Course {
  return {
    id: record.id,
    code: record.code,
    title: record.title,
    capacity: record.capacity,
    seatsTaken: record.seatsTaken,
    waitlistLength: record.waitlistLength,
    pending: record.pending,
    createdAt: record.createdAt,
    updatedAt: record.updatedAt,
  };
}

const STAFF = ["registrar", "service", "operator"] as const;

/** Registrars and services act for any student; anyone else only as themselves and without priority. */
function mayActFor(principal: Principal | null, studentId: string, priority: number): void {
  if (!principal || hasRole(principal, "registrar", "service")) return;
  if (studentId !== principal.subject) {
    throw permissionDenied("STUDENT_MISMATCH", `a student may act only as themselves: student_id must be "${principal.subject}"`, {
      metadata: { student_id: studentId },
    });
  }
  if (priority !== 0) throw permissionDenied("PRIORITY_NOT_ALLOWED", "only registrars and services may set priority; leave it 0");
}

/**
 * Whose requests ListRequests lists: a student only their own (an empty student_id means them);
 * staff name the student.
 */
function requestsOwner(principal: Principal | null, studentId: string): string {
  if (!principal || hasRole(principal, ...STAFF)) return requireStudentId(studentId);
  if (studentId !== "" && studentId !== principal.subject) {
    throw permissionDenied("STUDENT_MISMATCH", `a student may list only their own requests: leave student_id empty or set it to "${principal.subject}"`, {
      metadata: { student_id: studentId },
    });
  }
  return principal.subject;
}

function viewerOf(principal: Principal | null): Viewer {
  return { subject: principal?.subject ?? "", seesEveryone: !principal || hasRole(principal, "registrar", "service", "operator") };
}

/** When a waiting Enroll must answer: a little before the call's deadline, else after maxWaitMs. */
function answerBy(ctx: CallContext, maxWaitMs: number): number {
  const now = Date.now();
  if (!ctx.deadline) return now + maxWaitMs;
  const remaining = ctx.deadline.getTime() - now;
  return now + Math.min(maxWaitMs, remaining - Math.min(200, Math.max(20, remaining * 0.1)));
}

/** The EnrollmentService registration: handlers and who may call each RPC (DESIGN.md §Who may do what). */
export function enrollmentService(deps: EnrollmentServiceDeps) {
  const { sql, feed } = deps;
  return defineService<EnrollmentServiceServer>(
    EnrollmentServiceService,
    {
      async createCourse(request) {
        const course = await createCourse(sql, {
          code: requireCourseCode(request.code),
          title: requireTitle(request.title),
          capacity: requireCapacity(request.capacity),
        });
        return { course: toCourse(course) };
      },

      async getCourse(request) {
        return { course: toCourse(await getCourse(sql, requireId(request.id, "id"))) };
      },

      async listCourses(request) {
        const limit = pageSize(request.pageSize);
        const courses = await listCourses(sql, courseCodeAfter(request.pageToken), limit + 1);
        const page = courses.slice(0, limit);
        return {
          courses: page.map(toCourse),
          nextPageToken: courses.length > limit ? pageToken("courses", page[page.length - 1]!.code) : "",
        };
      },

      async updateCourse(request) {
        const id = requireId(request.id, "id");
        const title = request.title === undefined ? undefined : requireTitle(request.title);
        const capacity = request.capacity === undefined ? undefined : requireCapacity(request.capacity);
        const { course, promoted } = await updateCourse(sql, feed, { id, title, capacity });
        return { course: toCourse(course), promotedStudentIds: promoted.map((p) => p.studentId) };
      },

      async enroll(request, ctx) {
        const input = {
          idempotencyKey: requireIdempotencyKey(request.idempotencyKey),
          studentId: requireStudentId(request.studentId),
          courseId: requireId(request.courseId, "course_id"),
          priority: requirePriority(request.priority),
          traceparent: currentTraceparent() ?? null,
        };
        mayActFor(ctx.principal, input.studentId, input.priority);
        ctx.span.setAttribute("coursemesh.allocator.course_id", input.courseId);
        const accepted = await deps.acceptor.accept(input);
        ctx.span.setAttribute("coursemesh.allocator.request_id", accepted.id);
        const answer = request.wait ? await deps.waits.wait(accepted, answerBy(ctx, deps.maxWaitMs), ctx.signal) : accepted;
        return toEnrollment(answer);
      },

      async getRequest(request, ctx) {
        const lookup = request.lookup;
        if (!lookup) throw invalidArgument("INVALID_ID", "set request_id or idempotency_key", { fieldViolations: [{ field: "lookup", description: "is required" }] });
        const record = await getRequest(
          sql,
          lookup.$case === "requestId" ? { requestId: requireId(lookup.value, "request_id") } : { idempotencyKey: requireIdempotencyKey(lookup.value) },
          viewerOf(ctx.principal),
        );
        return { enrollment: toEnrollment(record) };
      },

      async listRequests(request, ctx) {
        const studentId = requestsOwner(ctx.principal, request.studentId);
        const query = `requests:${studentId}`;
        const page = await listStudentRequests(sql, studentId, pageKeyAfter(request.pageToken, query), pageSize(request.pageSize));
        return { requests: page.items.map(toEnrollment), nextPageToken: page.next ? pageToken(query, page.next) : "" };
      },

      async *watchRequest(request, ctx) {
        const current = await getRequest(sql, { requestId: requireId(request.requestId, "request_id") }, viewerOf(ctx.principal));
        const signal = AbortSignal.any([ctx.signal, deps.stopping]);
        for await (const record of watchRequest(feed, deps.reader, current, signal)) yield { enrollment: toEnrollment(record) };
      },

      async drop(request, ctx) {
        const input = {
          studentId: requireStudentId(request.studentId),
          courseId: requireId(request.courseId, "course_id"),
          idempotencyKey: requireIdempotencyKey(request.idempotencyKey),
        };
        mayActFor(ctx.principal, input.studentId, 0);
        const drop = await dropEnrollment(sql, feed, input);
        return {
          promotedStudentId: drop.promotedStudentId ?? "",
          requestId: drop.requestId,
          courseId: drop.courseId,
          studentId: drop.studentId,
          previousStatus: STATUS[drop.previousStatus],
          promotedRequestId: drop.promotedRequestId ?? "",
          droppedAt: drop.droppedAt,
        };
      },

      async listEnrollments(request) {
        const courseId = requireId(request.courseId, "course_id");
        const query = `enrollments:${courseId}`;
        const page = await listEnrollments(sql, courseId, pageKeyAfter(request.pageToken, query), pageSize(request.pageSize));
        return { enrollments: page.items.map(toEnrollment), nextPageToken: page.next ? pageToken(query, page.next) : "" };
      },

      async listWaitlist(request) {
        const courseId = requireId(request.courseId, "course_id");
        const query = `waitlist:${courseId}`;
        const page = await listWaitlist(sql, courseId, pageKeyAfter(request.pageToken, query), pageSize(request.pageSize));
        return { entries: page.items.map(toEnrollment), nextPageToken: page.next ? pageToken(query, page.next) : "" };
      },
    },
    {
      createCourse: ["registrar"],
      updateCourse: ["registrar"],
      getCourse: "authenticated",
      listCourses: "authenticated",
      enroll: ["student", "registrar", "service"],
      drop: ["student", "registrar", "service"],
      getRequest: "authenticated",
      watchRequest: "authenticated",
      listRequests: ["student", ...STAFF],
      // Who sits in or waits for a course is staff's business; a student reads their own place with GetRequest.
      listEnrollments: STAFF,
      listWaitlist: STAFF,
    },
  );
}
