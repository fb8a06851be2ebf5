/**
 * The waitlist as a registrar and a student see it: counts and positions, paging, a drop promoting
 * the head in the same transaction, a capacity raise promoting as many as it frees.
 */
import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
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
  api = connect((await world.start()).grpcAddress);
  registrar = await tokens.registrar();
});

afterAll(async () => {
  api?.close();
  expect(await checkInvariants(world.sql, { allDecided: true })).toEqual([]);
  await world?.close();
});

/** A course with `capacity` seats and students s-1 … s-n enrolled one after another (so in that order). */
async function courseWith(capacity: number, students: number) {
  const { course } = await api.createCourse(registrar, { code: courseCode("WAIT"), title: "Waitlisted", capacity });
  const answers = [];
  for (let i = 1; i <= students; i++) {
    answers.push(await api.enroll(registrar, { idempotencyKey: `${course!.id}-${i}`, studentId: `s-${i}`, courseId: course!.id, wait: true }, 5000));
  }
  return { course: course!, answers };
}

test("counts and positions: seats in arrival order, the rest waitlisted 1st, 2nd, … and listed in that order", async () => {
  const { course, answers } = await courseWith(3, 8);
  expect(answers.map((a) => a.status)).toEqual([
    ...Array(3).fill(EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED),
    ...Array(5).fill(EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED),
  ]);
  expect(answers.map((a) => a.waitlistPosition)).toEqual([undefined, undefined, undefined, 1, 2, 3, 4, 5]);

  const { course: counted } = await api.getCourse(registrar, course.id);
  expect({ capacity: counted!.capacity, seatsTaken: counted!.seatsTaken, waitlistLength: counted!.waitlistLength, pending: counted!.pending }).toEqual({
    capacity: 3,
    seatsTaken: 3,
    waitlistLength: 5,
    pending: 0,
  });

  const seats = await api.listEnrollments(registrar, { courseId: course.id });
  expect(seats.enrollments.map((e) => e.studentId)).toEqual(["s-1", "s-2", "s-3"]);
  expect(seats.nextPageToken).toBe("");

  // Pages of two: positions are computed when read and run on across pages.
  const seen: [string, number | undefined][] = [];
  let pageToken = "";
  do {
    const page = await api.listWaitlist(registrar, { courseId: course.id, pageSize: 2, pageToken });
    expect(page.entries.length).toBeLessThanOrEqual(2);
    seen.push(...page.entries.map((e): [string, number | undefined] => [e.studentId, e.waitlistPosition]));
    pageToken = page.nextPageToken;
  } while (pageToken);
  expect(seen).toEqual([
    ["s-4", 1],
    ["s-5", 2],
    ["s-6", 3],
    ["s-7", 4],
    ["s-8", 5],
  ]);

  const mine = await api.getRequest(await tokens.student("s-6"), { lookup: { $case: "requestId", value: answers[5]!.requestId } });
  expect(mine.enrollment!.waitlistPosition).toBe(3);
  expect(mine.enrollment!.message).toContain("3rd on the waitlist");
});

test("drop: a freed seat goes to the waitlist head in the same transaction; a retry returns the same answer", async () => {
  const { course, answers } = await courseWith(2, 5);
  const student = await tokens.student("s-1");
  const dropped = await api.drop(student, { studentId: "s-1", courseId: course.id, idempotencyKey: "drop-s1" });
  expect(dropped).toMatchObject({
    requestId: answers[0]!.requestId,
    previousStatus: EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED,
    promotedStudentId: "s-3",
    promotedRequestId: answers[2]!.requestId,
  });
  expect(dropped.droppedAt).toBeInstanceOf(Date);
  expect(await api.drop(student, { studentId: "s-1", courseId: course.id, idempotencyKey: "drop-s1" })).toEqual(dropped);
  const reused = await failure(api.drop(registrar, { studentId: "s-2", courseId: course.id, idempotencyKey: "drop-s1" }));
  expect([reused.code, reused.reason]).toEqual([GrpcStatus.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED"]);

  const promoted = await api.getRequest(registrar, { lookup: { $case: "requestId", value: answers[2]!.requestId } });
  expect(promoted.enrollment!.status).toBe(EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED);
  expect(promoted.enrollment!.enrolledAt!.getTime()).toBeGreaterThan(promoted.enrollment!.decidedAt!.getTime());
  const gone = await api.getRequest(registrar, { lookup: { $case: "requestId", value: answers[0]!.requestId } });
  expect(gone.enrollment!.status).toBe(EnrollmentStatus.ENROLLMENT_STATUS_DROPPED);
  const waitlist = await api.listWaitlist(registrar, { courseId: course.id });
  expect(waitlist.entries.map((e) => [e.studentId, e.waitlistPosition])).toEqual([
    ["s-4", 1],
    ["s-5", 2],
  ]);

  // Giving up a waitlist place promotes nobody.
  const left = await api.drop(registrar, { studentId: "s-4", courseId: course.id, idempotencyKey: "drop-s4" });
  expect(left.previousStatus).toBe(EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED);
  expect(left.promotedStudentId).toBe("");
  const { course: after } = await api.getCourse(registrar, course.id);
  expect([after!.seatsTaken, after!.waitlistLength]).toEqual([2, 1]);

  // A dropped student may ask again, and queues behind those already waiting.
  const back = await api.enroll(student, { studentId: "s-1", courseId: course.id, idempotencyKey: "again-s1", wait: true }, 5000);
  expect([back.status, back.waitlistPosition]).toEqual([EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED, 2]);
  const nothing = await failure(api.drop(student, { studentId: "s-1", courseId: (await courseWith(1, 0)).course.id, idempotencyKey: "drop-none" }));
  expect([nothing.code, nothing.reason]).toEqual([GrpcStatus.NOT_FOUND, "ENROLLMENT_NOT_FOUND"]);
});

test("capacity raise promotes as many waitlist heads as it frees; a capacity below the seats taken is refused", async () => {
  const { course } = await courseWith(2, 6);
  const raised = await api.updateCourse(registrar, { id: course.id, capacity: 5, title: "Bigger room" });
  expect(raised.promotedStudentIds).toEqual(["s-3", "s-4", "s-5"]);
  expect(raised.course).toMatchObject({ capacity: 5, seatsTaken: 5, waitlistLength: 1, title: "Bigger room" });

  const huge = await api.updateCourse(registrar, { id: course.id, capacity: 100 });
  expect(huge.promotedStudentIds).toEqual(["s-6"]);
  expect(huge.course).toMatchObject({ seatsTaken: 6, waitlistLength: 0 });

  const below = await failure(api.updateCourse(registrar, { id: course.id, capacity: 5 }));
  expect([below.code, below.reason]).toEqual([GrpcStatus.FAILED_PRECONDITION, "CAPACITY_BELOW_SEATS_TAKEN"]);
  const shrunk = await api.updateCourse(registrar, { id: course.id, capacity: 6 });
  expect(shrunk.course).toMatchObject({ capacity: 6, seatsTaken: 6 });
  expect(shrunk.promotedStudentIds).toEqual([]);
});
