/**
 * Who may do what (DESIGN.md §Who may do what) and every kind of bad input: each refusal has the
 * right status code and ErrorInfo reason, names the field, and writes nothing.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mintToken } from "@coursemesh/shared/auth.ts";
import { GrpcStatus } from "@coursemesh/shared/grpc/errors.ts";
import { checkInvariants } from "../src/invariants.ts";
import { connect, courseCode, createWorld, failure, tokens, type Api, type TestWorld } from "./support.ts";

// Tests here start processes and run bursts on a shared two-core machine: 5 s is too tight.
setDefaultTimeout(60_000);

let world: TestWorld;
let api: Api;
let registrar: string;
let courseId: string;

beforeAll(async () => {
  world = await createWorld();
  api = connect((await world.start()).grpcAddress);
  registrar = await tokens.registrar();
  courseId = (await api.createCourse(registrar, { code: "API 100 LEC A1", title: "Refusals", capacity: 2 })).course!.id;
});

afterAll(async () => {
  api?.close();
  await world?.close();
});

async function expectRefusal(call: Promise<unknown>, code: GrpcStatus, reason: string, field?: string) {
  const error = await failure(call);
  expect({ code: GrpcStatus[error.code], reason: error.reason }).toEqual({ code: GrpcStatus[code], reason });
  expect(error.domain).toBe("coursemesh.dev");
  if (field) expect(error.fieldViolations.map((v) => v.field)).toContain(field);
  return error;
}

describe("who may do what", () => {
  test("no token is UNAUTHENTICATED; a bad one too", async () => {
    await expectRefusal(api.listCourses(""), GrpcStatus.UNAUTHENTICATED, "TOKEN_MISSING");
    await expectRefusal(api.listCourses("not.a.jwt"), GrpcStatus.UNAUTHENTICATED, "TOKEN_MALFORMED");
    const forged = await mintToken({ subject: "registrar-1", roles: ["registrar"], secret: "another-secret-that-is-long-enough-0000" });
    await expectRefusal(api.listCourses(forged), GrpcStatus.UNAUTHENTICATED, "TOKEN_INVALID");
  });

  test("courses are the registrar's: students, services and operators cannot create or change them, but may read them", async () => {
    for (const token of [await tokens.student("s-1"), await tokens.service(), await tokens.operator()]) {
      await expectRefusal(api.createCourse(token, { code: courseCode(), title: "No", capacity: 1 }), GrpcStatus.PERMISSION_DENIED, "ROLE_REQUIRED");
      await expectRefusal(api.updateCourse(token, { id: courseId, capacity: 10 }), GrpcStatus.PERMISSION_DENIED, "ROLE_REQUIRED");
      expect((await api.getCourse(token, courseId)).course!.id).toBe(courseId);
    }
  });

  test("students enroll and drop only as themselves, and cannot set priority", async () => {
    const student = await tokens.student("s-self");
    await expectRefusal(api.enroll(student, { idempotencyKey: "a-1", studentId: "s-other", courseId }), GrpcStatus.PERMISSION_DENIED, "STUDENT_MISMATCH");
    await expectRefusal(api.enroll(student, { idempotencyKey: "a-2", studentId: "s-self", courseId, priority: 5 }), GrpcStatus.PERMISSION_DENIED, "PRIORITY_NOT_ALLOWED");
    await expectRefusal(api.drop(student, { idempotencyKey: "a-3", studentId: "s-other", courseId }), GrpcStatus.PERMISSION_DENIED, "STUDENT_MISMATCH");
    // Registrars and services may do both.
    const boosted = await api.enroll(await tokens.service(), { idempotencyKey: "a-4", studentId: "s-other", courseId, priority: 5 });
    expect(boosted.priority).toBe(5);
  });

  test("operators cannot enroll; waitlists and seat lists are for staff only", async () => {
    await expectRefusal(api.enroll(await tokens.operator(), { idempotencyKey: "a-5", studentId: "s-x", courseId }), GrpcStatus.PERMISSION_DENIED, "ROLE_REQUIRED");
    const student = await tokens.student("s-self");
    await expectRefusal(api.listWaitlist(student, { courseId }), GrpcStatus.PERMISSION_DENIED, "ROLE_REQUIRED");
    await expectRefusal(api.listEnrollments(student, { courseId }), GrpcStatus.PERMISSION_DENIED, "ROLE_REQUIRED");
    expect((await api.listWaitlist(await tokens.operator(), { courseId })).entries).toBeArray();
  });
});

describe("bad input", () => {
  test("CreateCourse: code, title and capacity are checked; a taken code is ALREADY_EXISTS", async () => {
    const bad: [Record<string, unknown>, string, string][] = [
      [{ code: "", title: "T", capacity: 1 }, "INVALID_COURSE_CODE", "code"],
      [{ code: " LEADING", title: "T", capacity: 1 }, "INVALID_COURSE_CODE", "code"],
      [{ code: "BAD\tCODE", title: "T", capacity: 1 }, "INVALID_COURSE_CODE", "code"],
      [{ code: "X".repeat(65), title: "T", capacity: 1 }, "INVALID_COURSE_CODE", "code"],
      [{ code: courseCode(), title: "  ", capacity: 1 }, "INVALID_TITLE", "title"],
      [{ code: courseCode(), title: "T".repeat(201), capacity: 1 }, "INVALID_TITLE", "title"],
      [{ code: courseCode(), title: "T" }, "INVALID_CAPACITY", "capacity"],
      [{ code: courseCode(), title: "T", capacity: -1 }, "INVALID_CAPACITY", "capacity"],
    ];
    for (const [request, reason, field] of bad) await expectRefusal(api.createCourse(registrar, request), GrpcStatus.INVALID_ARGUMENT, reason, field);
    await expectRefusal(api.createCourse(registrar, { code: "API 100 LEC A1", title: "Again", capacity: 1 }), GrpcStatus.ALREADY_EXISTS, "COURSE_CODE_TAKEN");
    // Zero seats is a real course: everyone is wait-listed.
    expect((await api.createCourse(registrar, { code: courseCode(), title: "Full from the start", capacity: 0 })).course!.capacity).toBe(0);
  });

  test("ids must be UUIDs, and unknown ones are NOT_FOUND", async () => {
    await expectRefusal(api.getCourse(registrar, ""), GrpcStatus.INVALID_ARGUMENT, "INVALID_ID", "id");
    await expectRefusal(api.getCourse(registrar, "course-1"), GrpcStatus.INVALID_ARGUMENT, "INVALID_ID", "id");
    await expectRefusal(api.getCourse(registrar, "01900000-0000-7000-8000-000000000000"), GrpcStatus.NOT_FOUND, "COURSE_NOT_FOUND");
    await expectRefusal(api.updateCourse(registrar, { id: "01900000-0000-7000-8000-000000000000", title: "x" }), GrpcStatus.NOT_FOUND, "COURSE_NOT_FOUND");
    await expectRefusal(api.getRequest(registrar, {}), GrpcStatus.INVALID_ARGUMENT, "INVALID_ID", "lookup");
    await expectRefusal(api.getRequest(registrar, { lookup: { $case: "requestId", value: "nope" } }), GrpcStatus.INVALID_ARGUMENT, "INVALID_ID", "request_id");
    await expectRefusal(
      api.getRequest(registrar, { lookup: { $case: "requestId", value: "01900000-0000-7000-8000-000000000000" } }),
      GrpcStatus.NOT_FOUND,
      "REQUEST_NOT_FOUND",
    );
    await expectRefusal(api.listWaitlist(registrar, { courseId: "01900000-0000-7000-8000-000000000000" }), GrpcStatus.NOT_FOUND, "COURSE_NOT_FOUND");
    await expectRefusal(api.listEnrollments(registrar, { courseId: "x" }), GrpcStatus.INVALID_ARGUMENT, "INVALID_ID", "course_id");
  });

  test("Enroll: key, student, course and priority are checked before anything is written", async () => {
    const service = await tokens.service();
    const ok = { idempotencyKey: "b-1", studentId: "s-ok", courseId, priority: 0 };
    const bad: [Record<string, unknown>, GrpcStatus, string, string?][] = [
      [{ idempotencyKey: "" }, GrpcStatus.INVALID_ARGUMENT, "INVALID_IDEMPOTENCY_KEY", "idempotency_key"],
      [{ idempotencyKey: "k".repeat(129) }, GrpcStatus.INVALID_ARGUMENT, "INVALID_IDEMPOTENCY_KEY", "idempotency_key"],
      [{ idempotencyKey: "bad\u0000key" }, GrpcStatus.INVALID_ARGUMENT, "INVALID_IDEMPOTENCY_KEY", "idempotency_key"],
      [{ studentId: "" }, GrpcStatus.INVALID_ARGUMENT, "INVALID_STUDENT_ID", "student_id"],
      [{ studentId: "two words" }, GrpcStatus.INVALID_ARGUMENT, "INVALID_STUDENT_ID", "student_id"],
      [{ studentId: "ada@example.edu" }, GrpcStatus.INVALID_ARGUMENT, "INVALID_STUDENT_ID", "student_id"],
      [{ courseId: "" }, GrpcStatus.INVALID_ARGUMENT, "INVALID_ID", "course_id"],
      [{ courseId: "01900000-0000-7000-8000-000000000000" }, GrpcStatus.NOT_FOUND, "COURSE_NOT_FOUND"],
      [{ priority: 101 }, GrpcStatus.INVALID_ARGUMENT, "INVALID_PRIORITY", "priority"],
      [{ priority: -1 }, GrpcStatus.INVALID_ARGUMENT, "INVALID_PRIORITY", "priority"],
    ];
    for (const [change, code, reason, field] of bad) await expectRefusal(api.enroll(service, { ...ok, ...change }), code, reason, field);
    // A 128-character key is fine.
    expect((await api.enroll(service, { ...ok, idempotencyKey: "k".repeat(128) })).idempotencyKey).toHaveLength(128);
    const [row] = await world.sql`select count(*)::int as n from allocator.requests where student_id = 's-ok'`;
    expect(row!.n).toBe(1);
  });

  test("Drop: key, student and course are checked; nothing to drop is NOT_FOUND", async () => {
    const service = await tokens.service();
    await expectRefusal(api.drop(service, { idempotencyKey: "", studentId: "s-1", courseId }), GrpcStatus.INVALID_ARGUMENT, "INVALID_IDEMPOTENCY_KEY", "idempotency_key");
    await expectRefusal(api.drop(service, { idempotencyKey: "d-1", studentId: "", courseId }), GrpcStatus.INVALID_ARGUMENT, "INVALID_STUDENT_ID", "student_id");
    await expectRefusal(api.drop(service, { idempotencyKey: "d-1", studentId: "s-1", courseId: "x" }), GrpcStatus.INVALID_ARGUMENT, "INVALID_ID", "course_id");
    await expectRefusal(
      api.drop(service, { idempotencyKey: "d-1", studentId: "s-1", courseId: "01900000-0000-7000-8000-000000000000" }),
      GrpcStatus.NOT_FOUND,
      "COURSE_NOT_FOUND",
    );
    await expectRefusal(api.drop(service, { idempotencyKey: "d-1", studentId: "s-nobody", courseId }), GrpcStatus.NOT_FOUND, "ENROLLMENT_NOT_FOUND");
  });

  test("UpdateCourse: capacity and title are checked", async () => {
    await expectRefusal(api.updateCourse(registrar, { id: courseId, capacity: -5 }), GrpcStatus.INVALID_ARGUMENT, "INVALID_CAPACITY", "capacity");
    await expectRefusal(api.updateCourse(registrar, { id: courseId, title: "" }), GrpcStatus.INVALID_ARGUMENT, "INVALID_TITLE", "title");
  });

  test("paging: a negative size and a foreign or forged token are refused", async () => {
    await expectRefusal(api.listCourses(registrar, { pageSize: -1 }), GrpcStatus.INVALID_ARGUMENT, "INVALID_PAGE_SIZE", "page_size");
    await expectRefusal(api.listCourses(registrar, { pageToken: "%%%" }), GrpcStatus.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", "page_token");
    const { nextPageToken } = await api.listCourses(registrar, { pageSize: 1 });
    expect(nextPageToken).not.toBe("");
    await expectRefusal(api.listWaitlist(registrar, { courseId, pageToken: nextPageToken }), GrpcStatus.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", "page_token");
    const second = await api.listCourses(registrar, { pageSize: 1, pageToken: nextPageToken });
    expect(second.courses).toHaveLength(1);
  });

  test("refusals wrote nothing: the invariants hold", async () => {
    expect(await checkInvariants(world.sql)).toEqual([]);
  });
});
