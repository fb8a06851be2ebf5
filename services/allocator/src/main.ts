/**
 * The allocator process: accepts enrollment requests, decides them in fair batches and answers for
 * any request from any replica. Wiring only; the work is in the modules it names.
 */
import postgres from "postgres";
import { required } from "@coursemesh/shared/config.ts";
import type { Sql } from "@coursemesh/shared/db.ts";
import { startServiceEvents } from "@coursemesh/shared/events/wiring.ts";
import { runService } from "@coursemesh/shared/service.ts";
import { Allocator } from "./allocate.ts";
import { ChangeFeed, RequestReader } from "./changes.ts";
import { CourseDirectory } from "./courses.ts";
import { Acceptor, DecisionWaits } from "./enroll.ts";
import { enrollmentService } from "./grpc.ts";
import { registerCourseGauges } from "./metrics.ts";

// Rows the relay reads at a time. It publishes them on the process's only JavaScript thread, which
// also serves Enroll and runs the deciders, but in slices with a turn of the event loop between them
// (see RelayOptions.publishSliceSize), so the read size no longer bounds how long Enroll calls wait
// behind it. 500 is the relay's own default; a constant rather than a setting because it is tuned
// with bench/allocator.ts, not per deployment.
const RELAY_BATCH_SIZE = 500;

await runService({
  service: "allocator",
  migrationsDir: new URL("../migrations", import.meta.url).pathname,
  async setup({ config, logger, sql, nats, shutdown }) {
    const relay = await startServiceEvents({ config, sql, nats, logger, service: "allocator", streams: ["ENROLLMENT"], relay: { batchSize: RELAY_BATCH_SIZE } });

    // The deciders' transactions get connections of their own, one per worker and kept open: on the
    // service's pool they ran on whichever connection was next (postgres.js hands out idle ones in
    // turn, among those the accepts opened), and a release of 20,000 requests decided about 10% fewer
    // a second than on connections that run nothing but decisions.
    const workers = required(config, "ALLOCATOR_WORKERS");
    const deciderSql = postgres({
      ...sql.options,
      max: workers,
      idle_timeout: null,
      connection: { ...sql.options.connection, application_name: "coursemesh-allocator-deciders" },
    } as unknown as postgres.Options<{}>) as unknown as Sql;
    const feed = new ChangeFeed(sql, logger);
    const reader = new RequestReader(sql);
    const courses = new CourseDirectory(sql);
    const allocator = new Allocator({
      sql: deciderSql,
      logger,
      feed,
      batchSize: required(config, "ALLOCATOR_BATCH_SIZE"),
      holdMs: required(config, "ALLOCATOR_HOLD_MS"),
      workers,
      safetyPollMs: required(config, "ALLOCATOR_SAFETY_POLL_MS"),
      paused: required(config, "ALLOCATOR_PAUSED"),
      wakeRelay: () => relay.wake(),
      deferRelay: (ms) => relay.defer(ms),
      onDecided: (courseId, decided) => acceptor.noteDecided(courseId, decided),
    });
    const acceptor = new Acceptor({
      sql,
      logger,
      courses,
      feed,
      wake: (courseIds) => allocator.wake(courseIds),
      priorityStepMs: required(config, "ALLOCATOR_PRIORITY_STEP_MS"),
      maxPending: required(config, "ALLOCATOR_MAX_PENDING"),
      batchSize: required(config, "ALLOCATOR_ACCEPT_BATCH_SIZE"),
    });
    const waits = new DecisionWaits(feed, reader);
    const stopping = new AbortController();

    await feed.start((courseIds) => allocator.wake(courseIds));
    registerCourseGauges(sql);
    allocator.start();
    process.on("SIGUSR2", () => allocator.resume());

    // Waiting calls answer with their current state and watches end, so the gRPC server can close.
    shutdown.on("stop-intake", "waits", () => {
      stopping.abort();
      waits.releaseAll();
    });
    // Accepted calls are written, then the batch in flight commits (or rolls back) whole.
    shutdown.on("finish-in-flight", "allocation", async () => {
      await acceptor.drained();
      await allocator.stop();
      await deciderSql.end({ timeout: 5 });
      await feed.stop();
    });
    // After the last batch committed: publish what is in flight; the next leader sends the rest.
    shutdown.on("drain-nats", "outbox-relay", () => relay.stop());

    return {
      grpc: [enrollmentService({ sql, feed, reader, acceptor, waits, maxWaitMs: required(config, "ALLOCATOR_MAX_WAIT_MS"), stopping: stopping.signal })],
    };
  },
});
