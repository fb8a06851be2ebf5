/** The notifier process: events → deliveries → email and webhooks, plus the NotificationService API. */
import { Notification } from "@coursemesh/proto/coursemesh/notifier/v1/notifier";
import { required } from "@coursemesh/shared/config";
import { enqueue, startConsumer, type RunningConsumer, type StreamName } from "@coursemesh/shared/events/index";
import { startServiceEvents } from "@coursemesh/shared/events/wiring.ts";
import { runService } from "@coursemesh/shared/service";
import { fanOut } from "./fanout.ts";
import { notificationService, toNotification } from "./grpc.ts";
import { linkRoutes } from "./links.ts";
import type { ChannelName } from "./recipients.ts";
import { effectiveRetentionDays, minimumRetentionDays, startPruner } from "./retention.ts";
import { startSender } from "./sender.ts";
import { createSmtpTransport } from "./smtp.ts";

/** The streams the notifier reads, with the durable consumer of each. */
const CONSUMED: { stream: StreamName; durable: string; skipStaleVersions: boolean }[] = [
  // Seat readings and health carry state: an older one arriving late is dropped.
  { stream: "SEATS", durable: "notifier-seats", skipStaleVersions: true },
  // Enrollment and ingest outcomes are facts: each is told, whatever the order.
  { stream: "ENROLLMENT", durable: "notifier-enrollment", skipStaleVersions: false },
  { stream: "INGEST", durable: "notifier-ingest", skipStaleVersions: false },
];

await runService({
  service: "notifier",
  migrationsDir: new URL("../migrations", import.meta.url).pathname,
  async setup({ config, logger, sql, nats, shutdown }) {
    const prefix = config.NATS_PREFIX ?? "";
    const crashAt = config.NOTIFIER_CRASH_AT ?? "";
    if (crashAt) logger.warn({ crashAt }, "NOTIFIER_CRASH_AT is set: this process kills itself on purpose (tests only)");
    const guard = { allowPrivate: required(config, "NOTIFIER_ALLOW_PRIVATE_HOSTS") };
    if (guard.allowPrivate) logger.warn("NOTIFIER_ALLOW_PRIVATE_HOSTS=true: webhooks may reach private and loopback addresses");
    const publicUrl = required(config, "NOTIFIER_PUBLIC_URL");

    const email = createSmtpTransport({
      url: required(config, "NOTIFIER_SMTP_URL"),
      from: required(config, "NOTIFIER_MAIL_FROM"),
      poolSize: required(config, "NOTIFIER_SMTP_POOL_SIZE"),
    });
    const sender = startSender({
      sql,
      logger,
      email,
      settings: {
        from: required(config, "NOTIFIER_MAIL_FROM"),
        maxAttempts: required(config, "NOTIFIER_MAX_ATTEMPTS"),
        retryBaseMs: required(config, "NOTIFIER_RETRY_BASE_MS"),
        retryMaxMs: required(config, "NOTIFIER_RETRY_MAX_MS"),
        concurrency: required(config, "NOTIFIER_SEND_CONCURRENCY"),
        batchSize: required(config, "NOTIFIER_SEND_BATCH_SIZE"),
        pollMs: required(config, "NOTIFIER_POLL_MS"),
        emailRatePerHour: required(config, "NOTIFIER_EMAIL_RATE_PER_HOUR"),
        webhookRatePerHour: required(config, "NOTIFIER_WEBHOOK_RATE_PER_HOUR"),
        webhookTimeoutMs: required(config, "NOTIFIER_WEBHOOK_TIMEOUT_MS"),
        guard,
        authDisabled: Boolean(config.AUTH_DISABLED),
        crashAt,
      },
      // The dead-letter copy goes through the outbox, so it commits with the FAILED status.
      async deadLetter(tx, row, error) {
        await enqueue(tx, {
          subject: "dlq.notifier.sender",
          type: "coursemesh.notifier.v1.Notification",
          payload: { notification: Notification.toJSON(toNotification(row)), error },
        });
      },
    });
    const relay = await startServiceEvents({
      config,
      sql,
      nats,
      logger,
      service: "notifier",
      streams: ["SEATS", "ENROLLMENT", "INGEST", "DLQ"],
      consumers: CONSUMED.map(({ stream, durable }) => ({ stream, durable })),
    });

    const fanOutSettings = { publicUrl, coalesceMs: required(config, "NOTIFIER_COALESCE_SECONDS") * 1000 };
    const configuredRetention = required(config, "NOTIFIER_HISTORY_RETENTION_DAYS");
    const retention = effectiveRetentionDays(configuredRetention, minimumRetentionDays(CONSUMED.map((c) => c.stream), fanOutSettings.coalesceMs));
    if (retention.raised) {
      logger.warn(
        { configured: configuredRetention, retentionDays: retention.days },
        `NOTIFIER_HISTORY_RETENTION_DAYS=${configuredRetention} is shorter than the windows recent history is read for (event redelivery, coalescing, the rate cap); keeping ${retention.days} days`,
      );
    }
    const pruner = startPruner({
      sql,
      logger,
      retentionDays: retention.days,
      intervalMs: required(config, "NOTIFIER_HISTORY_PRUNE_INTERVAL_SECONDS") * 1000,
    });
    const consumers: RunningConsumer[] = [];
    for (const { stream, durable, skipStaleVersions } of CONSUMED) {
      consumers.push(
        await startConsumer<Record<string, unknown>, Set<ChannelName>>({
          sql,
          nats,
          service: "notifier",
          prefix,
          logger,
          stream,
          durable,
          skipStaleVersions,
          // One transaction fans out a batch of events with one INSERT (a transaction per event made
          // consuming the bottleneck); two in flight overlap one's commit with the next one's work.
          batchSize: required(config, "NOTIFIER_CONSUME_BATCH_SIZE"),
          concurrency: required(config, "NOTIFIER_CONSUME_CONCURRENCY"),
          batchHandler: (tx, events) => fanOut(tx, fanOutSettings, events),
          // After the commit, before the acks: the moment the new deliveries are visible.
          afterCommit(channels, events) {
            if (crashAt === "after-fanout") {
              logger.warn({ eventIds: events.map((e) => e.eventId) }, "NOTIFIER_CRASH_AT=after-fanout: killing the process before the ack");
              process.kill(process.pid, "SIGKILL");
            }
            if (channels.size) sender.wake(channels);
          },
        }),
      );
    }

    shutdown.on("stop-intake", "consumers", async () => {
      await Promise.all(consumers.map((c) => c.stop()));
    });
    shutdown.on("finish-in-flight", "sender", () => sender.stop());
    shutdown.on("finish-in-flight", "retention", () => pruner.stop());
    shutdown.on("drain-nats", "relay", () => relay.stop());
    shutdown.on("close-db", "smtp", () => email.close());

    const settings = {
      publicUrl,
      confirmTtlMs: required(config, "NOTIFIER_CONFIRM_TTL_HOURS") * 60 * 60 * 1000,
      guard,
      authDisabled: Boolean(config.AUTH_DISABLED),
      wake: () => sender.wake(["EMAIL"]),
    };
    return {
      grpc: [notificationService({ sql, settings, sendTest: (input) => sender.sendTest(input) })],
      handleHttp: linkRoutes(sql, logger),
      maxRequestBodySize: 64 * 1024,
    };
  },
});
