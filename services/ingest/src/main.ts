/**
 * The ingest process: course PDFs to course outlines, in the background. Wiring only.
 */
import { startConsumer } from "@coursemesh/shared/events/index.ts";
import { startServiceEvents } from "@coursemesh/shared/events/wiring.ts";
import { runService } from "@coursemesh/shared/service.ts";
import { openDocumentStore } from "./document-store.ts";
import { createExtractPool } from "./extract-pool.ts";
import { ingestService } from "./grpc.ts";
import { ingestHttpHandler, MULTIPART_OVERHEAD_BYTES } from "./http.ts";
import { listenForJobChanges } from "./job-changes.ts";
import type { WorkItem } from "./job-events.ts";
import { registerQueueGauges } from "./metrics.ts";
import { createJobProcessor } from "./process.ts";
import { startSweeper } from "./sweeper.ts";

await runService({
  service: "ingest",
  migrationsDir: new URL("../migrations", import.meta.url).pathname,
  async setup({ config, logger, sql, nats, authenticator, shutdown }) {
    const prefix = config.NATS_PREFIX ?? "";
    const documents = await openDocumentStore(nats, prefix, config.INGEST_DOCUMENTS_MAX_BYTES!);
    const changes = await listenForJobChanges(sql, logger);
    const limits = { maxBytes: config.INGEST_MAX_BYTES!, maxQueued: config.INGEST_MAX_QUEUED! };

    const pool = createExtractPool(config.INGEST_CONCURRENCY!, config.INGEST_WORKER_NICE!);
    pool.warm();
    const relay = await startServiceEvents({
      config,
      sql,
      nats,
      logger,
      service: "ingest",
      streams: ["INGEST", "WORK", "DLQ"],
      consumers: [{ stream: "WORK", durable: "ingest-workers" }],
    });
    const backoff = config.INGEST_RETRY_BACKOFF_MS!;
    const retryDelaysMs = [backoff, backoff * 5, backoff * 25];
    const processor = createJobProcessor({
      sql,
      documents,
      pool,
      changes,
      logger: logger.child({ component: "worker" }),
      leaseMs: config.INGEST_ACK_WAIT_MS!,
      maxAttempts: config.INGEST_MAX_ATTEMPTS!,
      retryDelaysMs,
      jobTimeoutMs: config.INGEST_JOB_TIMEOUT_MS!,
    });
    const consumer = await startConsumer<WorkItem>({
      sql,
      nats,
      service: "ingest",
      prefix,
      logger,
      stream: "WORK",
      durable: "ingest-workers",
      handler: processor.handle,
      concurrency: config.INGEST_CONCURRENCY!,
      ackWaitMs: config.INGEST_ACK_WAIT_MS!,
      backoffMs: retryDelaysMs,
      // The processor gives up (FAILED, then the DLQ) after INGEST_MAX_ATTEMPTS; this only stops a
      // work item that keeps bouncing for another reason (e.g. restarts) from circling forever.
      maxDeliver: config.INGEST_MAX_ATTEMPTS! + 10,
    });
    registerQueueGauges(sql, processor.running);
    const sweeper = startSweeper({
      sql,
      documents,
      logger: logger.child({ component: "sweeper" }),
      intervalMs: config.INGEST_SWEEP_INTERVAL_MS!,
      blobGraceMs: config.INGEST_BLOB_GRACE_MS!,
      abandonedAfterMs: Math.max(5 * 60_000, 10 * config.INGEST_ACK_WAIT_MS!),
    });

    const shuttingDown = new AbortController();
    let consumerStopped: Promise<void> = Promise.resolve();
    // WatchJob streams end at once (clients watch again on another replica), so gRPC stops quickly.
    shutdown.on("not-serving", "watchers", () => shuttingDown.abort());
    shutdown.on("stop-intake", "work", () => {
      consumerStopped = consumer.stop();
    });
    shutdown.on("finish-in-flight", "jobs", async () => {
      // Short jobs finish; long ones go back to the queue for another replica rather than hold the exit.
      const grace = Math.min(10_000, Math.floor(config.SHUTDOWN_TIMEOUT_MS! / 3));
      const finished = await Promise.race([consumerStopped.then(() => true), Bun.sleep(grace).then(() => false)]);
      if (!finished) {
        logger.info({ running: processor.running() }, "interrupting jobs still running; they resume on another worker");
        processor.interruptAll();
        await consumerStopped;
      }
      await Promise.all([pool.close(), sweeper.stop()]);
    });
    shutdown.on("drain-nats", "relay", () => relay.stop());
    shutdown.on("drain-nats", "job-changes", () => changes.close());

    return {
      grpc: [ingestService({ sql, documents, changes, limits, shutdownSignal: shuttingDown.signal })],
      handleHttp: ingestHttpHandler({ sql, documents, authenticator, limits, logger }),
      maxRequestBodySize: limits.maxBytes + 16 * MULTIPART_OVERHEAD_BYTES,
    };
  },
});
