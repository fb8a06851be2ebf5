/**
 * The fairness rule (DESIGN.md §Allocation): among requests pending when a batch is taken, seats go
 * in score order, score = arrival − priority × ALLOCATOR_PRIORITY_STEP_MS; ALLOCATOR_HOLD_MS lets
 * priority count across requests that arrive within the hold. Also the back-pressure of
 * ALLOCATOR_MAX_PENDING, which needs requests to stay pending.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { GrpcStatus } from "@coursemesh/shared/grpc/errors.ts";
import { checkInvariants, waitUntilAllDecided } from "../src/invariants.ts";
import { connect, courseCode, createWorld, EnrollmentStatus, failure, tokens, type TestWorld } from "./support.ts";

// Tests here start processes and run bursts on a shared two-core machine: 5 s is too tight.
setDefaultTimeout(60_000);

let world: TestWorld;

beforeAll(async () => {
  world = await createWorld();
});

afterAll(async () => {
  await world?.close();
});

describe("with allocation paused", () => {
  test("a burst of mixed priorities gets its seats in score order, and the waitlist is in score order", async () => {
    const paused = await world.start({ ALLOCATOR_PAUSED: "true", ALLOCATOR_MAX_PENDING: "60" });
    const api = connect(paused.grpcAddress);
    const registrar = await tokens.registrar();
    const { course } = await api.createCourse(registrar, { code: courseCode("FAIR"), title: "Fair", capacity: 10 });
    const priorities = Array.from({ length: 60 }, (_, i) => (i * 37) % 101);
    const accepted = await Promise.all(
      priorities.map((priority, i) => api.enroll(registrar, { idempotencyKey: `fair-${i}`, studentId: `f-${i}`, courseId: course!.id, priority })),
    );
    expect(accepted.every((a) => a.status === EnrollmentStatus.ENROLLMENT_STATUS_PENDING)).toBe(true);
    // Queue positions are score order too, before anything is decided.
    const { enrollment } = await api.getRequest(registrar, { lookup: { $case: "idempotencyKey", value: "fair-0" } });
    expect(enrollment!.queuePosition).toBeGreaterThan(1);

    // Back-pressure: the course has ALLOCATOR_MAX_PENDING undecided requests.
    const full = await failure(api.enroll(registrar, { idempotencyKey: "fair-overflow", studentId: "f-overflow", courseId: course!.id }));
    expect([full.code, full.reason]).toEqual([GrpcStatus.RESOURCE_EXHAUSTED, "QUEUE_FULL"]);
    expect(full.retryDelayMs).toBeGreaterThan(0);
    // …but a retry of an accepted request still gets its answer.
    expect((await api.enroll(registrar, { idempotencyKey: "fair-3", studentId: "f-3", courseId: course!.id, priority: priorities[3] })).requestId).toBe(
      accepted[3]!.requestId,
    );
    // Queue positions follow the score: a boosted newcomer goes ahead of those already waiting.
    const { course: queued } = await api.createCourse(registrar, { code: courseCode("QUEUE"), title: "Queue", capacity: 1 });
    const place = async (key: string, priority: number) =>
      (await api.enroll(registrar, { idempotencyKey: key, studentId: key, courseId: queued!.id, priority })).queuePosition;
    expect([await place("q-a", 0), await place("q-b", 0), await place("q-c", 100)]).toEqual([1, 2, 1]);
    const now = async (key: string) => (await api.getRequest(registrar, { lookup: { $case: "idempotencyKey", value: key } })).enrollment!.queuePosition;
    expect([await now("q-a"), await now("q-b"), await now("q-c")]).toEqual([2, 3, 1]);

    // A request still pending cannot be dropped yet.
    const early = await failure(api.drop(registrar, { studentId: "f-0", courseId: course!.id, idempotencyKey: "fair-drop" }));
    expect([early.code, early.reason]).toEqual([GrpcStatus.FAILED_PRECONDITION, "REQUEST_PENDING"]);

    paused.process.kill("SIGUSR2");
    expect(await waitUntilAllDecided(world.sql, 10_000)).toBe(true);

    const ranked = await world.sql`
      select student_id, status from allocator.requests where course_id = ${course!.id} order by score, id`;
    expect(ranked.slice(0, 10).map((r) => r.status)).toEqual(Array(10).fill("ENROLLED"));
    expect(ranked.slice(10).every((r) => r.status === "WAITLISTED")).toBe(true);
    const waitlist = await api.listWaitlist(registrar, { courseId: course!.id, pageSize: 100 });
    expect(waitlist.entries.map((e) => e.studentId)).toEqual(ranked.slice(10).map((r) => r.student_id));
    expect(waitlist.entries.map((e) => e.waitlistPosition)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
    expect(await checkInvariants(world.sql, { allDecided: true })).toEqual([]);
    api.close();
    expect(await paused.stop()).toBe(0);
  });
});

describe("with a hold", () => {
  test("a later boosted request beats an earlier plain one that arrived within the hold", async () => {
    const held = await world.start({ ALLOCATOR_HOLD_MS: "1000" });
    const api = connect(held.grpcAddress);
    const registrar = await tokens.registrar();
    const { course } = await api.createCourse(registrar, { code: courseCode("HOLD"), title: "Held", capacity: 1 });
    const plain = api.enroll(registrar, { idempotencyKey: "hold-plain", studentId: "h-plain", courseId: course!.id, wait: true }, 10_000);
    await Bun.sleep(200);
    // 50 × 10 ms = 500 ms of boost: its score is 300 ms before the plain request's.
    const boosted = api.enroll(registrar, { idempotencyKey: "hold-boosted", studentId: "h-boosted", courseId: course!.id, priority: 50, wait: true }, 10_000);
    const [early, late] = await Promise.all([plain, boosted]);
    expect(late.status).toBe(EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED);
    expect([early.status, early.reason]).toEqual([EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED, "COURSE_FULL"]);
    // Nobody is decided before their score is ALLOCATOR_HOLD_MS old.
    const [row] = await world.sql`
      select min(extract(epoch from decided_at - score) * 1000)::float8 as held_ms from allocator.requests where course_id = ${course!.id}`;
    expect(row!.held_ms).toBeGreaterThanOrEqual(1000);
    expect(await checkInvariants(world.sql, { allDecided: true })).toEqual([]);
    api.close();
  });
});
