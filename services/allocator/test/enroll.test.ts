/**
 * Enroll end to end through gRPC: accept, decide, wait, idempotency, duplicates of a student, and
 * reading a request back (GetRequest, WatchRequest).
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { GrpcStatus } from "@coursemesh/shared/grpc/errors.ts";
import { checkInvariants } from "../src/invariants.ts";
import { connect, courseCode, createWorld, EnrollmentStatus, failure, tokens, type Api, type TestWorld } from "./support.ts";

// Tests here start processes and run bursts on a shared two-core machine: 5 s is too tight.
setDefaultTimeout(60_000);

let world: TestWorld;
let api: Api;
let registrar: string;

beforeAll(async () => {
  world = await createWorld();
  const allocator = await world.start();
  api = connect(allocator.grpcAddress);
  registrar = await tokens.registrar();
});

afterAll(async () => {
  api?.close();
  expect(await checkInvariants(world.sql)).toEqual([]);
  await world?.close();
});

async function newCourse(capacity: number) {
  const { course } = await api.createCourse(registrar, { code: courseCode(), title: "Practical Programming", capacity });
  return course!;
}

describe("Enroll", () => {
  test("accepts at once as PENDING, and wait=true answers with the decision", async () => {
    const course = await newCourse(1);
    const student = await tokens.student("s-1001");
    const accepted = await api.enroll(student, { idempotencyKey: "k-accept-1", studentId: "s-1001", courseId: course.id });
    expect(accepted.requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect([EnrollmentStatus.ENROLLMENT_STATUS_PENDING, EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED]).toContain(accepted.status);
    expect(accepted.courseCode).toBe(course.code);
    expect(accepted.createdAt).toBeInstanceOf(Date);

    const other = await tokens.student("s-1002");
    const decided = await api.enroll(other, { idempotencyKey: "k-accept-2", studentId: "s-1002", courseId: course.id, wait: true }, 5000);
    expect(decided.status).toBe(EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED);
    expect(decided.reason).toBe("COURSE_FULL");
    expect(decided.waitlistPosition).toBe(1);
    expect(decided.message).toContain("1st on the waitlist");
    expect(decided.decidedAt).toBeInstanceOf(Date);

    const first = await api.getRequest(student, { lookup: { $case: "requestId", value: accepted.requestId } });
    expect(first.enrollment!.status).toBe(EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED);
    expect(first.enrollment!.enrolledAt).toBeInstanceOf(Date);
  });

  test("the same key and payload returns the original request and its decision; another payload is ALREADY_EXISTS", async () => {
    const course = await newCourse(5);
    const service = await tokens.service();
    const request = { idempotencyKey: "k-repeat", studentId: "s-2001", courseId: course.id, priority: 7, wait: true };
    const first = await api.enroll(service, request, 5000);
    expect(first.status).toBe(EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED);
    const again = await api.enroll(service, request);
    expect(again.requestId).toBe(first.requestId);
    expect(again.status).toBe(EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED);

    for (const changed of [{ studentId: "s-2002" }, { priority: 8 }, { courseId: (await newCourse(1)).id }]) {
      const error = await failure(api.enroll(service, { ...request, ...changed }));
      expect(error.code).toBe(GrpcStatus.ALREADY_EXISTS);
      expect(error.reason).toBe("IDEMPOTENCY_KEY_REUSED");
    }
  });

  test("concurrent duplicates of one key make one request", async () => {
    const course = await newCourse(3);
    const student = await tokens.student("s-3001");
    const answers = await Promise.all(
      Array.from({ length: 50 }, () => api.enroll(student, { idempotencyKey: "k-dup-burst", studentId: "s-3001", courseId: course.id })),
    );
    expect(new Set(answers.map((a) => a.requestId)).size).toBe(1);
    const [row] = await world.sql`select count(*)::int as n from allocator.requests where idempotency_key = 'k-dup-burst'`;
    expect(row!.n).toBe(1);
  });

  test("a student never gets two seats: later requests are REJECTED with the reason", async () => {
    const course = await newCourse(10);
    const student = await tokens.student("s-4001");
    const first = await api.enroll(student, { idempotencyKey: "k-twice-1", studentId: "s-4001", courseId: course.id, wait: true }, 5000);
    expect(first.status).toBe(EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED);
    const second = await api.enroll(student, { idempotencyKey: "k-twice-2", studentId: "s-4001", courseId: course.id, wait: true }, 5000);
    expect(second.status).toBe(EnrollmentStatus.ENROLLMENT_STATUS_REJECTED);
    expect(second.reason).toBe("ALREADY_ENROLLED");

    // Several at once from one student: one competes, the rest are refused.
    const burst = await Promise.all(
      [1, 2, 3, 4].map((i) => api.enroll(student, { idempotencyKey: `k-many-${i}`, studentId: "s-4002", courseId: course.id, wait: true }, 5000).catch((e) => e)),
    );
    // (s-4002 is not this token's subject: students act only as themselves.)
    expect(burst.every((e) => e instanceof Error)).toBe(true);
    const registrarBurst = await Promise.all(
      [1, 2, 3, 4].map((i) => api.enroll(registrar, { idempotencyKey: `k-many-${i}`, studentId: "s-4002", courseId: course.id, wait: true }, 5000)),
    );
    const statuses = registrarBurst.map((a) => a.status).sort();
    expect(statuses.filter((s) => s === EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED)).toHaveLength(1);
    expect(statuses.filter((s) => s === EnrollmentStatus.ENROLLMENT_STATUS_REJECTED)).toHaveLength(3);
    for (const answer of registrarBurst.filter((a) => a.status === EnrollmentStatus.ENROLLMENT_STATUS_REJECTED)) {
      expect(["ALREADY_PENDING", "ALREADY_ENROLLED"]).toContain(answer.reason);
    }
    const { course: after } = await api.getCourse(registrar, course.id);
    expect(after!.seatsTaken).toBe(2);
  });

  test("GetRequest by idempotency key, and a student cannot see another student's request", async () => {
    const course = await newCourse(2);
    const student = await tokens.student("s-5001");
    const accepted = await api.enroll(student, { idempotencyKey: "k-lookup", studentId: "s-5001", courseId: course.id, wait: true }, 5000);
    const byKey = await api.getRequest(student, { lookup: { $case: "idempotencyKey", value: "k-lookup" } });
    expect(byKey.enrollment!.requestId).toBe(accepted.requestId);
    expect(byKey.enrollment!.idempotencyKey).toBe("k-lookup");

    const stranger = await tokens.student("s-5002");
    for (const lookup of [
      { $case: "requestId" as const, value: accepted.requestId },
      { $case: "idempotencyKey" as const, value: "k-lookup" },
    ]) {
      const error = await failure(api.getRequest(stranger, { lookup }));
      expect(error.code).toBe(GrpcStatus.NOT_FOUND);
      expect(error.reason).toBe("REQUEST_NOT_FOUND");
    }
    const staff = await api.getRequest(await tokens.operator(), { lookup: { $case: "requestId", value: accepted.requestId } });
    expect(staff.enrollment!.studentId).toBe("s-5001");
  });

  test("WatchRequest sends the current state, then each change until the watch is over", async () => {
    const course = await newCourse(1);
    const holder = await api.enroll(registrar, { idempotencyKey: "k-watch-holder", studentId: "s-6001", courseId: course.id, wait: true }, 5000);
    expect(holder.status).toBe(EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED);
    const student = await tokens.student("s-6002");
    const waiting = await api.enroll(student, { idempotencyKey: "k-watch-waiter", studentId: "s-6002", courseId: course.id, wait: true }, 5000);
    expect(waiting.status).toBe(EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED);

    const watch = api.watch(student, waiting.requestId);
    const current = await watch.next();
    expect(current!.enrollment!.status).toBe(EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED);
    expect(current!.enrollment!.waitlistPosition).toBe(1);

    await api.drop(registrar, { studentId: "s-6001", courseId: course.id, idempotencyKey: "k-watch-drop" });
    const promoted = await watch.next();
    expect(promoted!.enrollment!.status).toBe(EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED);
    expect(await watch.next()).toBeNull();
    expect(watch.error).toBeUndefined();
  });
});
