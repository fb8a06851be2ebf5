/**
 * ListRequests: a student's own enrollment requests in every status, newest first, positions
 * computed when read, paged; students list only their own, staff name the student.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { GrpcStatus } from "@coursemesh/shared/grpc/errors.ts";
import { courseCode, EnrollmentStatus, failure, startAllocator, tokens, type Api, type TestWorld } from "./support.ts";

// Starts an allocator process on a shared two-core machine: 5 s is too tight.
setDefaultTimeout(60_000);

let world: TestWorld;
let api: Api;
let registrar: string;

beforeAll(async () => ({ world, api, registrar } = await startAllocator()));

afterAll(async () => {
  api?.close();
  await world?.close();
});

async function newCourse(capacity: number): Promise<string> {
  return (await api.createCourse(registrar, { code: courseCode("REQ"), title: "Requests", capacity })).course!.id;
}

/** Every page of a student's requests, `pageSize` at a time. */
async function allPages(token: string, studentId: string, pageSize: number) {
  const pages = [];
  let pageToken = "";
  do {
    const page = await api.listRequests(token, { studentId, pageSize, pageToken });
    pages.push(page.requests);
    pageToken = page.nextPageToken;
  } while (pageToken && pages.length < 20);
  return pages;
}

describe("a student's own requests", () => {
  test("every status, newest first, with the waitlist place as it is when read", async () => {
    const full = await newCourse(1);
    const open = await newCourse(5);
    const student = await tokens.student("ls-ana");
    await api.enroll(registrar, { idempotencyKey: "ls-holder", studentId: "ls-holder", courseId: full, wait: true }, 5000);
    await api.enroll(registrar, { idempotencyKey: "ls-first-waiter", studentId: "ls-first-waiter", courseId: full, wait: true }, 5000);
    const waiting = await api.enroll(student, { idempotencyKey: "ls-ana-1", studentId: "ls-ana", courseId: full, wait: true }, 5000);
    const enrolled = await api.enroll(student, { idempotencyKey: "ls-ana-2", studentId: "ls-ana", courseId: open, wait: true }, 5000);
    const refused = await api.enroll(student, { idempotencyKey: "ls-ana-3", studentId: "ls-ana", courseId: open, wait: true }, 5000);
    expect([waiting.status, enrolled.status, refused.status]).toEqual([
      EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED,
      EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED,
      EnrollmentStatus.ENROLLMENT_STATUS_REJECTED,
    ]);

    const mine = await api.listRequests(student);
    expect(mine.requests.map((r) => r.requestId)).toEqual([refused.requestId, enrolled.requestId, waiting.requestId]);
    expect(mine.nextPageToken).toBe("");
    expect(mine.requests.every((r) => r.studentId === "ls-ana")).toBe(true);
    expect(mine.requests[0]!.reason).toBe("ALREADY_ENROLLED");
    expect(mine.requests[2]!.waitlistPosition).toBe(2);
    // The same request as GetRequest returns it.
    expect(mine.requests[1]).toEqual((await api.getRequest(student, { lookup: { $case: "requestId", value: enrolled.requestId } })).enrollment!);

    // Whoever waited ahead drops: the place moves up, read fresh, and nobody else's request shows.
    await api.drop(registrar, { idempotencyKey: "ls-drop-1", studentId: "ls-first-waiter", courseId: full });
    const after = await api.listRequests(student, { studentId: "ls-ana" });
    expect(after.requests[2]!.waitlistPosition).toBe(1);
    expect(after.requests[2]!.message).toContain("1st on the waitlist");
  });

  test("pages cover every request once, in order, and a token continues only its own list", async () => {
    const courses = await Promise.all([1, 2, 3, 4, 5].map(() => newCourse(3)));
    for (const [i, courseId] of courses.entries()) await api.enroll(registrar, { idempotencyKey: `ls-bo-${i}`, studentId: "ls-bo", courseId });
    const pages = await allPages(await tokens.student("ls-bo"), "", 2);
    expect(pages.map((page) => page.length)).toEqual([2, 2, 1]);
    expect(pages.flat().map((r) => r.courseId)).toEqual([...courses].reverse());

    const first = await api.listRequests(registrar, { studentId: "ls-bo", pageSize: 2 });
    const foreign = await failure(api.listRequests(registrar, { studentId: "ls-ana", pageToken: first.nextPageToken }));
    expect({ code: GrpcStatus[foreign.code], reason: foreign.reason }).toEqual({ code: "INVALID_ARGUMENT", reason: "INVALID_PAGE_TOKEN" });
  });

  test("a student with no requests gets an empty list", async () => {
    expect(await api.listRequests(await tokens.student("ls-nobody"))).toEqual({ requests: [], nextPageToken: "" });
  });

  test("the index on (student_id, created_at) serves the query", async () => {
    const plan = await world.sql.begin(async (tx) => {
      await tx`set local enable_seqscan = off`;
      return tx`explain select id from allocator.requests where student_id = 'ls-bo' order by created_at desc, id desc limit 3`;
    });
    expect(plan.map((row) => Object.values(row)[0]).join("\n")).toContain("requests_by_student_newest");
  });
});

describe("who may list whose requests", () => {
  test("a student naming another student is PERMISSION_DENIED", async () => {
    const error = await failure(api.listRequests(await tokens.student("ls-carl"), { studentId: "ls-ana" }));
    expect({ code: GrpcStatus[error.code], reason: error.reason }).toEqual({ code: "PERMISSION_DENIED", reason: "STUDENT_MISMATCH" });
  });

  test("registrars, services and operators list any student's, and must name the student", async () => {
    for (const token of [registrar, await tokens.service(), await tokens.operator()]) {
      expect((await api.listRequests(token, { studentId: "ls-ana" })).requests.map((r) => r.studentId)).toEqual(["ls-ana", "ls-ana", "ls-ana"]);
      const error = await failure(api.listRequests(token));
      expect({ code: GrpcStatus[error.code], reason: error.reason }).toEqual({ code: "INVALID_ARGUMENT", reason: "INVALID_STUDENT_ID" });
      expect(error.fieldViolations.map((v) => v.field)).toEqual(["student_id"]);
    }
  });

  test("no token is UNAUTHENTICATED", async () => {
    expect((await failure(api.listRequests("", { studentId: "ls-ana" }))).code).toBe(GrpcStatus.UNAUTHENTICATED);
  });
});
