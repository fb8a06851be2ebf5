/**
 * The allocator's Prometheus metrics, under the reference design's names so its dashboards keep
 * working. Per-course gauges are read from Postgres at scrape time, so every replica reports the
 * same truth instead of its own share.
 */
import { Counter, Gauge, Histogram } from "prom-client";
import type { Sql } from "@coursemesh/shared/db.ts";
import { registry } from "@coursemesh/shared/metrics.ts";
import { selectCourseGauges } from "./store.ts";

/** Requests by what happened to them: PENDING when accepted, then their decision; PROMOTED and DROPPED later. */
export const enrollmentRequests = new Counter({
  name: "enrollment_requests_total",
  help: "Enrollment requests accepted (status PENDING) and decided (ENROLLED, WAITLISTED, REJECTED), plus promotions (PROMOTED) and drops (DROPPED).",
  labelNames: ["status"] as const,
  registers: [registry],
});

/** Time from a request's arrival (accept) to its decision. */
export const enrollmentLatency = new Histogram({
  name: "enrollment_latency_seconds",
  help: "Time from accepting an enrollment request to its decision (the database's clock at both ends).",
  buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
  registers: [registry],
});

/** Allocation batches and their sizes. */
export const allocationBatchSize = new Histogram({
  name: "allocator_batch_size",
  help: "Requests decided per allocation transaction.",
  buckets: [1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000],
  registers: [registry],
});

/** Accept micro-batches and their sizes. */
export const acceptBatchSize = new Histogram({
  name: "allocator_accept_batch_size",
  help: "Enroll calls written per accept insert (one commit).",
  buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000],
  registers: [registry],
});

/** Counts a batch's decisions and their latencies. */
export function recordDecisions(decisions: readonly { status: string; waitedMs: number }[]): void {
  const counts = new Map<string, number>();
  for (const decision of decisions) {
    counts.set(decision.status, (counts.get(decision.status) ?? 0) + 1);
    enrollmentLatency.observe(Math.max(0, decision.waitedMs) / 1000);
  }
  for (const [status, count] of counts) enrollmentRequests.inc({ status }, count);
  allocationBatchSize.observe(decisions.length);
}

/** Counts promotions from the waitlist. */
export function recordPromotions(count: number): void {
  if (count > 0) enrollmentRequests.inc({ status: "PROMOTED" }, count);
}

/** Registers the per-course gauges, read from Postgres once per scrape. */
export function registerCourseGauges(sql: Sql): void {
  let snapshot: ReturnType<typeof selectCourseGauges> | undefined;
  let takenAt = 0;
  // The three gauges are collected one after another by one scrape: share one query between them.
  const read = () => {
    if (!snapshot || Date.now() - takenAt > 1000) {
      takenAt = Date.now();
      snapshot = selectCourseGauges(sql).catch(() => []);
    }
    return snapshot;
  };
  const gauge = (name: string, help: string, pick: (row: Awaited<ReturnType<typeof selectCourseGauges>>[number]) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ["course_id"] as const,
      registers: [registry],
      async collect() {
        this.reset();
        for (const row of await read()) this.set({ course_id: row.courseId }, pick(row));
      },
    });
  gauge("coursemesh_queue_depth", "Undecided enrollment requests per course.", (row) => row.pending);
  gauge("coursemesh_seats_taken", "Seats held per course.", (row) => row.seatsTaken);
  gauge("coursemesh_capacity", "Seats per course.", (row) => row.capacity);
}
