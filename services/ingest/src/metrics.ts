/**
 * Ingest's Prometheus metrics: uploads, job outcomes, pages read and processing time, and the
 * queue as Postgres sees it (read at scrape time, so every replica reports the same truth).
 */
import { Counter, Gauge, Histogram } from "prom-client";
import type { Sql } from "@coursemesh/shared/db.ts";
import { registry } from "@coursemesh/shared/metrics.ts";
import { countJobsByStatus, type JobStatusName } from "./store.ts";

const JOB_STATUSES: JobStatusName[] = ["PENDING", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"];

/** Uploads accepted (a job made or found by its idempotency key) and their bytes. */
export const uploadsAccepted = new Counter({
  name: "ingest_uploads_total",
  help: "Uploads that made (or, with a repeated idempotency key, returned) a job.",
  labelNames: ["transport"] as const,
  registers: [registry],
});

export const uploadBytes = new Counter({
  name: "ingest_upload_bytes_total",
  help: "Bytes of accepted uploads.",
  registers: [registry],
});

/** Attempts by how they ended: completed, failed (the job FAILED), retried, cancelled, interrupted. */
export const jobAttempts = new Counter({
  name: "ingest_job_attempts_total",
  help: "Processing attempts by outcome: completed, failed, retried, cancelled, interrupted.",
  labelNames: ["outcome"] as const,
  registers: [registry],
});

export const pagesProcessed = new Counter({
  name: "ingest_pages_processed_total",
  help: "PDF pages read by completed jobs.",
  registers: [registry],
});

export const attemptSeconds = new Histogram({
  name: "ingest_attempt_duration_seconds",
  help: "Time of one processing attempt, from claim to outcome.",
  labelNames: ["outcome"] as const,
  buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600],
  registers: [registry],
});

/** Registers the queue gauges, read from Postgres when Prometheus scrapes. */
export function registerQueueGauges(sql: Sql, running: () => number): void {
  // Both status gauges are collected in the same scrape (prom-client gathers metrics concurrently),
  // so they share one grouped count rather than each asking Postgres.
  let countsInFlight: Promise<Map<JobStatusName, number>> | undefined;
  const readCounts = () =>
    (countsInFlight ??= countJobsByStatus(sql).finally(() => {
      countsInFlight = undefined;
    }));
  new Gauge({
    name: "ingest_jobs_live",
    help: "Jobs PENDING or PROCESSING across all replicas.",
    labelNames: ["status"] as const,
    registers: [registry],
    async collect() {
      try {
        const counts = await readCounts();
        for (const status of ["PENDING", "PROCESSING"] as const) this.set({ status }, counts.get(status) ?? 0);
      } catch {
        // The database is unreachable: /readyz says so; the scrape still succeeds with the last values.
      }
    },
  });
  new Gauge({
    name: "coursemesh_ingest_jobs",
    help: "Jobs by status, across all replicas (read from Postgres at scrape time).",
    labelNames: ["status"] as const,
    registers: [registry],
    async collect() {
      try {
        const counts = await readCounts();
        for (const status of JOB_STATUSES) this.set({ status }, counts.get(status) ?? 0);
      } catch {
        // As above: the last values stand while the database is unreachable.
      }
    },
  });
  new Gauge({
    name: "ingest_jobs_running_here",
    help: "Jobs this process is working on.",
    registers: [registry],
    collect() {
      this.set(running());
    },
  });
}
