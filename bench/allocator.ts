/**
 * Allocator benchmark (issue 4), on a fresh database and NATS prefix, printing one JSON object:
 *   (a) one course of 30 seats, 20,000 Enroll calls from 200 concurrent callers: accepted/s,
 *       decided/s, accept latency and accept → decision latency; plus accept latency at a steady
 *       2,000 calls/s offered (open loop, measured from each call's scheduled start);
 *   (b) decisions alone: 20,000 requests accepted with allocation paused, then released (three
 *       times, the median reported);
 *   (c) 200 courses, 100,000 calls;
 *   (d) the baseline in the same run: one transaction per request with SELECT … FOR UPDATE on the
 *       course row (the reference design's shape, made correct: duplicate check, waitlist, the same
 *       event through the outbox), pool-sized concurrency, on the same freshly vacuumed database
 *       with the same synchronous_commit.
 * Run: bun run bench/allocator.ts [--quick]   (--quick: a tenth of the sizes, for a smoke test)
 * BENCH_SERVICE_LOG_LEVEL=debug prints the allocator's last log lines (one per batch) to stderr.
 */
import { availableParallelism, loadavg } from "node:os";
import * as grpc from "@grpc/grpc-js";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect as connectNats } from "@nats-io/transport-node";
import postgres from "postgres";
import { EnrollmentServiceClient, EnrollRequest, CreateCourseRequest } from "@coursemesh/proto/coursemesh/allocator/v1/allocator";
import { createSql, type Sql } from "@coursemesh/shared/db.ts";
import { deleteStreams, enqueue } from "@coursemesh/shared/events/index.ts";
import { unary } from "@coursemesh/shared/grpc/client.ts";
import {
  createTestDatabase,
  startServiceProcess,
  TEST_NATS_URL,
  testNatsPrefix,
  testToken,
  type ServiceProcess,
} from "@coursemesh/shared/testing/harness.ts";
import { connectH2Unary } from "./h2-unary.ts";
import { processCpuSeconds } from "./proc-cpu.ts";
import { percentile, round } from "./stats.ts";
import { decidedEvent } from "../services/allocator/src/events.ts";
import { checkInvariants, waitUntilAllDecided } from "../services/allocator/src/invariants.ts";
import type { DecidedStatus } from "../services/allocator/src/store.ts";

const quick = process.argv.includes("--quick");
const scale = (n: number) => (quick ? Math.round(n / 10) : n);
const SIZES = {
  stampede: scale(20_000),
  callers: 200,
  steadyRate: 2_000,
  steadySeconds: quick ? 2 : 5,
  decisions: scale(20_000),
  courses: 200,
  spread: scale(100_000),
  baselinePool: 10,
  releaseRounds: 3,
};
const CAPACITY = 30;
/** HTTP/2 connections the load generator spreads its calls over. */
const CHANNELS = 4;

type Api = { enroll(request: Partial<EnrollRequest>): Promise<void>; createCourse(code: string, capacity: number): Promise<string>; close(): void };

/** p50 and p99 of ascending latencies, in ms to two decimals. */
const latencyMs = (sorted: number[]) => ({ p50: round(percentile(sorted, 50), 2), p99: round(percentile(sorted, 99), 2) });

const ENROLL_PATH = "/coursemesh.allocator.v1.EnrollmentService/Enroll";

/** Enroll over the hand-framed HTTP/2 client (see h2-unary.ts for why); course setup over grpc-js. */
function connectApi(address: string, token: string): Api {
  const h2 = connectH2Unary(address, token, CHANNELS);
  const control = new EnrollmentServiceClient(address, grpc.credentials.createInsecure());
  return {
    async enroll(request) {
      await h2.call(ENROLL_PATH, EnrollRequest.encode(EnrollRequest.fromPartial(request)).finish());
    },
    async createCourse(code, capacity) {
      const { course } = await unary(control.createCourse.bind(control), CreateCourseRequest.fromPartial({ code, title: `Benchmark ${code}`, capacity }), { token });
      return course!.id;
    },
    close: () => {
      h2.close();
      control.close();
    },
  };
}

/** `count` calls from `callers` concurrent callers (closed loop); returns each call's latency in ms. */
async function closedLoop(count: number, callers: number, call: (i: number) => Promise<void>): Promise<{ seconds: number; latencies: number[] }> {
  const latencies: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: callers }, async () => {
      while (next < count) {
        const i = next++;
        const t = performance.now();
        await call(i);
        latencies.push(performance.now() - t);
      }
    }),
  );
  return { seconds: (performance.now() - started) / 1000, latencies: latencies.sort((a, b) => a - b) };
}

/** Calls at a fixed rate (open loop); latency counts from each call's scheduled start, so a stall is not hidden. */
async function openLoop(rate: number, seconds: number, call: (i: number) => Promise<void>): Promise<{ sent: number; latencies: number[] }> {
  const total = Math.round(rate * seconds);
  const latencies: number[] = [];
  const pending: Promise<void>[] = [];
  const started = performance.now();
  for (let i = 0; i < total; i++) {
    const due = started + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 1) await Bun.sleep(wait);
    pending.push(call(i).then(() => void latencies.push(performance.now() - due)));
  }
  await Promise.all(pending);
  return { sent: total, latencies: latencies.sort((a, b) => a - b) };
}

/** Accept → decision latencies and the decision span of one or more courses, from the database's clock. */
async function decisionStats(sql: Sql, courseIds: string[]) {
  const [row] = await sql`
    select count(*)::int as n,
      extract(epoch from max(decided_at) - min(created_at))::float8 as span_s,
      (percentile_cont(0.5) within group (order by extract(epoch from decided_at - created_at)) * 1000)::float8 as p50_ms,
      (percentile_cont(0.99) within group (order by extract(epoch from decided_at - created_at)) * 1000)::float8 as p99_ms
    from allocator.requests where course_id = any(${courseIds}::uuid[])`;
  return { decided: row!.n as number, decidedPerSecond: row!.n / row!.span_s, p50: row!.p50_ms as number, p99: row!.p99_ms as number };
}

type CpuSample = Map<string, number>;

/** CPU used so far by the allocator, this load generator and the bench database's Postgres backends. */
async function cpuSample(admin: Sql, database: string, servicePid: number): Promise<CpuSample> {
  const sample: CpuSample = new Map();
  sample.set("allocator", processCpuSeconds(servicePid));
  const own = process.cpuUsage();
  sample.set("load_generator", (own.user + own.system) / 1e6);
  for (const row of await admin`select pid from pg_stat_activity where datname = ${database}`) sample.set(`postgres:${row.pid}`, processCpuSeconds(row.pid));
  return sample;
}

/**
 * CPU per unit of work between two samples, in microseconds: how much of the two cores each part
 * needs, whatever else the machine was doing (other work slows the wall clock, not these).
 */
function cpuPer(before: CpuSample, after: CpuSample, units: number) {
  const spent = { allocator: 0, postgres: 0, load_generator: 0 };
  for (const [key, value] of after) {
    const delta = value - (before.get(key) ?? 0);
    if (key.startsWith("postgres:")) spent.postgres += Math.max(0, delta);
    else spent[key as "allocator" | "load_generator"] += delta;
  }
  const us = (seconds: number) => round((seconds / units) * 1e6, 0);
  return { allocator: us(spent.allocator), postgres: us(spent.postgres), load_generator: us(spent.load_generator) };
}

async function vacuum(sql: Sql): Promise<void> {
  await sql`vacuum analyze allocator.requests`;
  await sql`vacuum analyze allocator.courses`;
  await sql`vacuum analyze allocator.outbox`;
}

/** Waits until the relay has published every event (so one phase's backlog does not slow the next); returns when. */
async function untilOutboxEmpty(sql: Sql, timeoutMs = 300_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [row] = await sql`select not exists (select 1 from allocator.outbox) as empty`;
    if (row!.empty || Date.now() > deadline) return performance.now();
    await Bun.sleep(20);
  }
}

/**
 * Waits until `count` decisions of the course have committed; returns when. It polls the course's
 * version (one more per decision event) by primary key: polling for pending requests instead would
 * walk the queue index past the rows a batch is deciding, on every poll, beside the work measured.
 */
async function untilDecided(sql: Sql, courseId: string, count: number, timeoutMs = 120_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [row] = await sql`select version from allocator.courses where id = ${courseId}`;
    if (Number(row!.version) >= count) return performance.now();
    if (Date.now() > deadline) throw new Error(`only ${row!.version} of ${count} decisions after ${timeoutMs} ms`);
    await Bun.sleep(5);
  }
}

/**
 * The baseline: each request decided in a transaction of its own that locks the course row
 * (SELECT … FOR UPDATE), checks the student's live enrollment, writes the decision, the course's
 * counters and the same event through the outbox. Requests are taken in score order, as the
 * reference design popped them from its sorted set.
 */
async function baseline(sql: Sql, courseId: string, concurrency: number): Promise<{ seconds: number; decided: number }> {
  const queue = (await sql`select id, student_id from allocator.requests where course_id = ${courseId} and status = 'PENDING' order by score, id`).map(
    (row) => ({ id: row.id as string, studentId: row.student_id as string }),
  );
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < queue.length) {
        const request = queue[next++]!;
        await sql.begin(async (tx) => {
          const [course] = await tx`
            select id, code, title, capacity, seats_taken, waitlist_length, version from allocator.courses where id = ${courseId} for update`;
          const [live] = await tx`
            select status from allocator.requests
            where course_id = ${courseId} and student_id = ${request.studentId} and status in ('ENROLLED', 'WAITLISTED')`;
          const status: DecidedStatus = live ? "REJECTED" : course!.seats_taken < course!.capacity ? "ENROLLED" : "WAITLISTED";
          const reason = live ? `ALREADY_${live.status}` : status === "WAITLISTED" ? "COURSE_FULL" : "";
          const [decided] = await tx`
            update allocator.requests
            set status = ${status}, reason = ${reason}, decided_at = clock_timestamp(), updated_at = clock_timestamp(),
                enrolled_at = case when ${status} = 'ENROLLED' then clock_timestamp() end
            where id = ${request.id} and status = 'PENDING'
            returning decided_at`;
          const seatsTaken = course!.seats_taken + (status === "ENROLLED" ? 1 : 0);
          const waitlistLength = course!.waitlist_length + (status === "WAITLISTED" ? 1 : 0);
          const version = Number(course!.version) + 1;
          await tx`
            update allocator.courses set seats_taken = ${seatsTaken}, waitlist_length = ${waitlistLength}, version = ${version}, updated_at = clock_timestamp()
            where id = ${courseId}`;
          const locked = { id: courseId, code: course!.code, title: course!.title, capacity: course!.capacity, seatsTaken, waitlistLength, version };
          await enqueue(
            tx,
            decidedEvent(
              { course: locked, version, seatsTaken, capacity: locked.capacity, occurredAt: decided!.decided_at },
              { id: request.id, studentId: request.studentId, status, reason, waitlistPosition: status === "WAITLISTED" ? waitlistLength : undefined },
            ),
          );
        });
      }
    }),
  );
  return { seconds: (performance.now() - started) / 1000, decided: queue.length };
}

async function main() {
  const load = loadavg()[0]!;
  const db = await createTestDatabase();
  const prefix = testNatsPrefix();
  const admin = postgres(db.url, { max: 2, onnotice: () => {} }) as unknown as Sql;
  const [{ synchronous_commit }] = (await admin`show synchronous_commit`) as unknown as [{ synchronous_commit: string }];
  const token = await testToken("bench", ["service", "registrar"]);
  let service: ServiceProcess | undefined;
  const env = { DATABASE_URL: db.url, NATS_PREFIX: prefix, LOG_LEVEL: "info", ALLOCATOR_MAX_PENDING: "1000000" };
  try {
    service = await startServiceProcess("allocator", { env, timeoutMs: 60_000 });
    let api = connectApi(service.grpcAddress, token);

    /** Load on one fresh course, then its decisions' statistics once every request is decided. */
    const onOneCourse = async <T>(code: string, requests: number, load: (courseId: string) => Promise<T>) => {
      await untilOutboxEmpty(admin);
      const courseId = await api.createCourse(code, CAPACITY);
      const before = await cpuSample(admin, db.name, service!.process.pid);
      const measured = await load(courseId);
      await waitUntilAllDecided(admin, 120_000);
      await untilOutboxEmpty(admin);
      const cpu = cpuPer(before, await cpuSample(admin, db.name, service!.process.pid), requests);
      return { measured, cpu, decisions: await decisionStats(admin, [courseId]) };
    };
    // (a) one course, a stampede from 200 callers; then a steady 2,000 calls/s.
    const { measured: stampede, cpu: stampedeCpu, decisions: stampedeDecisions } = await onOneCourse("BENCH A", SIZES.stampede, (courseId) =>
      closedLoop(SIZES.stampede, SIZES.callers, (i) => api.enroll({ idempotencyKey: `a-${i}`, studentId: `a-${i}`, courseId })),
    );
    const { measured: steady, cpu: steadyCpu, decisions: steadyDecisions } = await onOneCourse("BENCH A2", SIZES.steadyRate * SIZES.steadySeconds, (courseId) =>
      openLoop(SIZES.steadyRate, SIZES.steadySeconds, (i) => api.enroll({ idempotencyKey: `s-${i}`, studentId: `s-${i}`, courseId })),
    );

    // (c) 200 courses, 100,000 calls.
    await untilOutboxEmpty(admin);
    const courses: string[] = [];
    for (let i = 0; i < SIZES.courses; i++) courses.push(await api.createCourse(`BENCH C${i}`, CAPACITY));
    const spreadBefore = await cpuSample(admin, db.name, service.process.pid);
    const spread = await closedLoop(SIZES.spread, SIZES.callers, (i) =>
      api.enroll({ idempotencyKey: `c-${i}`, studentId: `c-${Math.floor(i / SIZES.courses)}`, courseId: courses[i % SIZES.courses]! }),
    );
    await waitUntilAllDecided(admin, 300_000);
    await untilOutboxEmpty(admin);
    const spreadCpu = cpuPer(spreadBefore, await cpuSample(admin, db.name, service.process.pid), SIZES.spread);
    const spreadDecisions = await decisionStats(admin, courses);

    // (b) and (d): 20,000 pending requests, accepted while allocation is paused. (b) runs a few
    // times, each on a fresh paused process and course, because a release lasts a second or two
    // and one burst of other work on the machine would decide the figure; the median is reported.
    // (d) decides its own 20,000 once: it runs for tens of seconds.
    api.close();
    await service.stop();
    const startPaused = async () => {
      service = await startServiceProcess("allocator", {
        env: { ...env, ALLOCATOR_PAUSED: "true", LOG_LEVEL: process.env.BENCH_SERVICE_LOG_LEVEL ?? "info" },
        timeoutMs: 60_000,
      });
      api = connectApi(service.grpcAddress, token);
    };
    const acceptPaused = async (code: string, tag: string) => {
      const courseId = await api.createCourse(code, CAPACITY);
      await closedLoop(SIZES.decisions, SIZES.callers, (i) => api.enroll({ idempotencyKey: `${tag}-${i}`, studentId: `${tag}-${i}`, courseId }));
      return courseId;
    };

    await startPaused();
    const baselineCourse = await acceptPaused("BENCH D", "d");
    await untilOutboxEmpty(admin);
    await vacuum(admin);
    const pool = createSql({ url: db.url, schema: "allocator", max: SIZES.baselinePool });
    const baseBefore = await cpuSample(admin, db.name, service!.process.pid);
    const base = await baseline(pool, baselineCourse, SIZES.baselinePool);
    await untilOutboxEmpty(admin);
    const baseCpu = cpuPer(baseBefore, await cpuSample(admin, db.name, service!.process.pid), base.decided);
    await pool.end();

    const releases: { decidedPerSecond: number; publishedWithinS: number; cpu: ReturnType<typeof cpuPer> }[] = [];
    for (let round = 1; round <= SIZES.releaseRounds; round++) {
      if (round > 1) {
        api.close();
        await service!.stop();
        await startPaused();
      }
      const releasedCourse = await acceptPaused(`BENCH B${round}`, `b${round}`);
      await untilOutboxEmpty(admin);
      await vacuum(admin);
      const before = await cpuSample(admin, db.name, service!.process.pid);
      const released = performance.now();
      service!.process.kill("SIGUSR2");
      const decided = await untilDecided(admin, releasedCourse, SIZES.decisions);
      // The relay publishes the batch's events to JetStream while and after it is decided.
      const published = await untilOutboxEmpty(admin);
      releases.push({
        decidedPerSecond: SIZES.decisions / ((decided - released) / 1000),
        publishedWithinS: (published - released) / 1000,
        cpu: cpuPer(before, await cpuSample(admin, db.name, service!.process.pid), SIZES.decisions),
      });
    }
    api.close();
    const median = [...releases].sort((x, y) => x.decidedPerSecond - y.decidedPerSecond)[Math.floor(releases.length / 2)]!;
    const baselinePerSecond = base.decided / base.seconds;

    if (process.env.BENCH_SERVICE_LOG_LEVEL) for (const line of service.logs.slice(-60)) console.error(JSON.stringify(line));
    const invariants = await checkInvariants(admin, { allDecided: true });
    const result = {
      benchmark: "allocator",
      quick,
      machine: { cores: availableParallelism(), load_average_1m_at_start: round(load, 2), load_average_1m_at_end: round(loadavg()[0]!, 2), synchronous_commit },
      a_stampede_one_course: {
        requests: SIZES.stampede,
        concurrent_callers: SIZES.callers,
        capacity: CAPACITY,
        accepted_per_s: round(SIZES.stampede / stampede.seconds, 0),
        decided_per_s: round(stampedeDecisions.decidedPerSecond, 0),
        accept_latency_ms: latencyMs(stampede.latencies),
        accept_to_decision_ms: { p50: round(stampedeDecisions.p50, 2), p99: round(stampedeDecisions.p99, 2) },
        cpu_us_per_request_incl_decision_and_publish: stampedeCpu,
      },
      a_steady_2000_per_s: {
        offered_per_s: SIZES.steadyRate,
        requests: steady.sent,
        accept_latency_ms: latencyMs(steady.latencies),
        accept_to_decision_ms: { p50: round(steadyDecisions.p50, 2), p99: round(steadyDecisions.p99, 2) },
        cpu_us_per_request_incl_decision_and_publish: steadyCpu,
      },
      b_decisions_alone: {
        requests: SIZES.decisions,
        decided_per_s: round(median.decidedPerSecond, 0),
        rounds_decided_per_s: releases.map((r) => round(r.decidedPerSecond, 0)),
        events_published_to_jetstream_within_s: round(median.publishedWithinS, 3),
        cpu_us_per_decision_incl_publish: median.cpu,
      },
      c_many_courses: {
        courses: SIZES.courses,
        requests: SIZES.spread,
        accepted_per_s: round(SIZES.spread / spread.seconds, 0),
        decided_per_s: round(spreadDecisions.decidedPerSecond, 0),
        accept_latency_ms: latencyMs(spread.latencies),
        accept_to_decision_ms: { p50: round(spreadDecisions.p50, 2), p99: round(spreadDecisions.p99, 2) },
        cpu_us_per_request_incl_decision_and_publish: spreadCpu,
      },
      d_baseline_select_for_update: {
        requests: base.decided,
        concurrency: SIZES.baselinePool,
        decided_per_s: round(baselinePerSecond, 0),
        seconds: round(base.seconds, 3),
        cpu_us_per_decision_incl_publish: baseCpu,
      },
      ratios: {
        b_decisions_vs_baseline: round(median.decidedPerSecond / baselinePerSecond, 1),
        a_accepted_vs_baseline_decided: round(SIZES.stampede / stampede.seconds / baselinePerSecond, 1),
      },
      targets: {
        b_decisions_per_s_at_least_25000: median.decidedPerSecond >= 25_000,
        b_at_least_15x_baseline: median.decidedPerSecond / baselinePerSecond >= 15,
        enroll_accepted_per_s_at_least_4000: SIZES.stampede / stampede.seconds >= 4_000,
        p99_accept_at_2000_per_s_at_most_25ms: percentile(steady.latencies, 99) <= 25,
      },
      invariants_hold: invariants.length === 0,
      invariant_problems: invariants,
    };
    console.log(JSON.stringify(result, null, 2));
  } finally {
    if (service && service.process.exitCode === null) await service.stop();
    await admin.end();
    const nats = await connectNats({ servers: TEST_NATS_URL });
    await deleteStreams(await jetstreamManager(nats), prefix).catch(() => {});
    await nats.close();
    await db.drop();
  }
}

await main();
