/**
 * Events on the ENROLLMENT stream: decided, dropped and promoted, each with the course's public
 * facts, the right status and position and a rising aggregate_version, and no personal data.
 */
import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { EnrollmentDecided, EnrollmentDropped, EnrollmentPromoted } from "@coursemesh/proto/coursemesh/events/v1/events";
import { testToken } from "@coursemesh/shared/testing/harness.ts";
import { checkInvariants } from "../src/invariants.ts";
import { connect, createWorld, EnrollmentStatus, tokens, type Api, type TestWorld } from "./support.ts";

// Tests here start processes and run bursts on a shared two-core machine: 5 s is too tight.
setDefaultTimeout(60_000);

let world: TestWorld;
let api: Api;

beforeAll(async () => {
  world = await createWorld();
  api = connect((await world.start()).grpcAddress);
});

afterAll(async () => {
  api?.close();
  await world?.close();
});

test("a decision, a drop and the promotion it causes reach the stream in order, with ids and public facts only", async () => {
  const registrar = await tokens.registrar();
  const { course } = await api.createCourse(registrar, { code: "CMPUT 201 LEC A1", title: "Practical Programming Methodology", capacity: 1 });
  // Student tokens carry an email address; it must not leak into events.
  const ada = await testToken("ada-1815", ["student"], "ada@example.edu");
  const alan = await testToken("alan-1912", ["student"], "alan@example.edu");
  const seat = await api.enroll(ada, { idempotencyKey: "ev-1", studentId: "ada-1815", courseId: course!.id, wait: true }, 5000);
  const wait = await api.enroll(alan, { idempotencyKey: "ev-2", studentId: "alan-1912", courseId: course!.id, wait: true }, 5000);
  expect([seat.status, wait.status]).toEqual([EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED, EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED]);
  const dropped = await api.drop(ada, { studentId: "ada-1815", courseId: course!.id, idempotencyKey: "ev-drop" });
  expect(dropped.promotedStudentId).toBe("alan-1912");

  const messages = await world.readEvents(4);
  expect(messages.map((m) => m.subject)).toEqual([
    `${world.natsPrefix}.enrollment.decided.${course!.id}`,
    `${world.natsPrefix}.enrollment.decided.${course!.id}`,
    `${world.natsPrefix}.enrollment.dropped.${course!.id}`,
    `${world.natsPrefix}.enrollment.promoted.${course!.id}`,
  ]);
  const codecs = [EnrollmentDecided, EnrollmentDecided, EnrollmentDropped, EnrollmentPromoted] as const;
  for (const [index, message] of messages.entries()) {
    expect(message.string()).not.toContain("@");
    const body = JSON.parse(message.string());
    // Canonical proto3 JSON: what the generated code would write for the same message, key for key.
    const codec = codecs[index]!;
    expect(body).toEqual(codec.toJSON(codec.fromJSON(body) as never));
    expect(message.headers?.get("Nats-Msg-Id")).toBe(body.eventId);
    expect(message.headers?.get("Content-Type")).toBe("application/json");
    expect(message.headers?.get("Coursemesh-Event")).toMatch(/^coursemesh\.events\.v1\.Enrollment(Decided|Dropped|Promoted)$/);
  }
  const [first, second] = messages.slice(0, 2).map((m) => EnrollmentDecided.fromJSON(JSON.parse(m.string())));
  expect(first).toMatchObject({
    courseId: course!.id,
    aggregateVersion: 1,
    courseCode: "CMPUT 201 LEC A1",
    courseTitle: "Practical Programming Methodology",
    requestId: seat.requestId,
    studentId: "ada-1815",
    status: EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED,
    reason: "",
    seatsTaken: 1,
    capacity: 1,
  });
  expect(first!.waitlistPosition).toBeUndefined();
  expect(first!.occurredAt).toBeInstanceOf(Date);
  expect(second).toMatchObject({
    aggregateVersion: 2,
    requestId: wait.requestId,
    studentId: "alan-1912",
    status: EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED,
    reason: "COURSE_FULL",
    waitlistPosition: 1,
    seatsTaken: 1,
  });
  const drop = EnrollmentDropped.fromJSON(JSON.parse(messages[2]!.string()));
  expect(drop).toMatchObject({
    aggregateVersion: 3,
    requestId: seat.requestId,
    studentId: "ada-1815",
    status: EnrollmentStatus.ENROLLMENT_STATUS_DROPPED,
    previousStatus: EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED,
    promotedStudentId: "alan-1912",
    promotedRequestId: wait.requestId,
    seatsTaken: 0,
    capacity: 1,
  });
  const promotion = EnrollmentPromoted.fromJSON(JSON.parse(messages[3]!.string()));
  expect(promotion).toMatchObject({
    aggregateVersion: 4,
    requestId: wait.requestId,
    studentId: "alan-1912",
    status: EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED,
    seatsTaken: 1,
    capacity: 1,
  });
  expect(await checkInvariants(world.sql)).toEqual([]);
});

test("a title with quotes, backslashes and non-ASCII letters arrives intact", async () => {
  const registrar = await tokens.registrar();
  const title = 'Systems "C" \\ Unix — Übung 1/2';
  const { course } = await api.createCourse(registrar, { code: "CMPUT 379 LEC B1", title, capacity: 1 });
  const seat = await api.enroll(registrar, { idempotencyKey: "ev-title", studentId: "grace-1906", courseId: course!.id, wait: true }, 5000);
  const decided = (await world.readEvents(5)).find((m) => m.subject.endsWith(course!.id));
  const event = EnrollmentDecided.fromJSON(JSON.parse(decided!.string()));
  expect(event).toMatchObject({ courseTitle: title, courseCode: "CMPUT 379 LEC B1", requestId: seat.requestId, aggregateVersion: 1 });
});
