/**
 * The sender loop: workers claim due deliveries (`FOR UPDATE SKIP LOCKED`, so replicas and workers
 * split them), send a batch concurrently over pooled SMTP or signed webhooks, and record every
 * outcome in the same transaction that holds the claim. A crash after the receiver accepted and
 * before the commit leaves the row PENDING, so it is sent once more with the same Message-ID /
 * webhook-id: at most one resend, recognisable as such. Transient failures back off exponentially
 * with jitter; the last attempt or a permanent error makes the delivery FAILED with a copy on DLQ
 * (through the outbox, in the same transaction).
 */
import { Counter, Histogram } from "prom-client";
import type { Principal } from "@coursemesh/shared/auth";
import type { Sql, Tx } from "@coursemesh/shared/db";
import { failedPrecondition, resourceExhausted } from "@coursemesh/shared/grpc/errors";
import type { Logger } from "@coursemesh/shared/logger";
import { registry } from "@coursemesh/shared/metrics";
import { currentTraceparent, extractTraceContext, SpanKind, withSpan } from "@coursemesh/shared/telemetry";
import { renderDelivery, type Message } from "./messages.ts";
import { normalizeEmail, normalizeWebhookUrl, type ChannelName, type UrlGuard } from "./recipients.ts";
import { DeliveryError, mailDomain, type EmailTransport } from "./smtp.ts";
import * as store from "./store.ts";
import type { AttemptOutcome, DeliveryRow } from "./store.ts";
import { postWebhook } from "./webhooks.ts";

export interface SenderSettings {
  from: string;
  maxAttempts: number;
  retryBaseMs: number;
  retryMaxMs: number;
  concurrency: number;
  batchSize: number;
  pollMs: number;
  emailRatePerHour: number;
  webhookRatePerHour: number;
  webhookTimeoutMs: number;
  guard: UrlGuard;
  authDisabled: boolean;
  /** Test-only fault injection (NOTIFIER_CRASH_AT). */
  crashAt: string;
}

export interface SenderDeps {
  sql: Sql;
  logger: Logger;
  email: EmailTransport;
  settings: SenderSettings;
  /** Writes the dead-letter copy of a FAILED delivery inside the transaction that records it. */
  deadLetter(tx: Tx, row: DeliveryRow, error: string): Promise<void>;
}

export interface SendTestInput {
  principal: Principal;
  channel: ChannelName;
  address: string;
}

export interface Sender {
  /** Look for due deliveries of these channels now (after a commit that made some). */
  wake(channels?: Iterable<ChannelName>): void;
  /** SendTest: validates, writes a test delivery, attempts it once inline and returns it. */
  sendTest(input: SendTestInput): Promise<DeliveryRow>;
  /** Stops claiming and waits for the batches in flight to be recorded. */
  stop(): Promise<void>;
}

/** The per-recipient rate cap counts sends within this window. */
export const RATE_WINDOW_MS = 60 * 60 * 1000;

const notificationsTotal = new Counter({
  name: "notifier_notifications_total",
  help: "Delivery attempts and decisions, by channel and resulting status.",
  labelNames: ["channel", "status"] as const,
  registers: [registry],
});
const notificationDelaySeconds = new Histogram({
  name: "notifier_notification_delay_seconds",
  help: "From the notification's creation (the event's fan-out) to acceptance by the SMTP server or webhook receiver.",
  labelNames: ["channel"] as const,
  buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800],
  registers: [registry],
});

/** The delay before attempt `attempts + 1`: exponential from `baseMs`, capped, with equal jitter. */
export function retryDelayMs(attempts: number, baseMs: number, maxMs: number, random: () => number = Math.random): number {
  const full = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempts - 1));
  return Math.round(full / 2 + random() * (full / 2));
}

/** The webhook body: Standard Webhooks' `{type, timestamp, data}` with the rendered text and the event itself. */
export function webhookBody(row: DeliveryRow, message: Message): string {
  return JSON.stringify({
    type: row.event_type,
    timestamp: row.created_at.toISOString(),
    data: {
      notification_id: row.id,
      subscription_id: row.subscription_id,
      event_id: row.event_id,
      subject: message.subject,
      text: message.text,
      monitor_id: row.monitor_id,
      course_id: row.course_id,
      student_id: row.student_id,
      job_id: row.job_id,
      event: (row.payload as { event?: unknown }).event ?? null,
    },
  });
}

/**
 * Wake-ups for the workers. New work of a channel wakes one idle worker of that channel (a worker
 * that claims a full batch wakes the next), so a stream of small commits does not send every
 * worker to the database for nothing. A wake-up while no worker is idle is remembered, never lost.
 */
class Wakeup {
  generation = 0;
  private idle: { channels: ChannelName[]; wake: () => void }[] = [];
  /** Wakes one idle worker of `channel`. */
  notify(channel: ChannelName): void {
    this.generation++;
    const index = this.idle.findIndex((entry) => entry.channels.includes(channel));
    if (index >= 0) this.idle.splice(index, 1)[0]!.wake();
  }
  /** Wakes every idle worker (shutdown). */
  notifyAll(): void {
    this.generation++;
    for (const entry of this.idle.splice(0)) entry.wake();
  }
  /** Waits up to `ms` unless a wake-up came since the worker saw `seen`. */
  wait(channels: ChannelName[], ms: number, seen: number): Promise<void> {
    if (this.generation !== seen) return Promise.resolve();
    return new Promise((resolve) => {
      const entry = {
        channels,
        wake: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      const timer = setTimeout(() => {
        const index = this.idle.indexOf(entry);
        if (index >= 0) this.idle.splice(index, 1);
        resolve();
      }, ms);
      this.idle.push(entry);
    });
  }
}

/** Starts the sender workers. */
export function startSender(deps: SenderDeps): Sender {
  const { sql, logger, email, settings } = deps;
  const log = logger.child({ component: "sender" });
  const domain = mailDomain(settings.from);
  const wakeup = new Wakeup();
  let stopping = false;

  function capFor(channel: ChannelName): number {
    return channel === "EMAIL" ? settings.emailRatePerHour : settings.webhookRatePerHour;
  }

  async function attempt(row: DeliveryRow, secret: string | null): Promise<void> {
    const message = renderDelivery(row.event_type, row.payload);
    await withSpan(
      "notifier.send",
      {
        kind: SpanKind.CLIENT,
        // The delivery continues the trace of the event that made it.
        parent: row.traceparent ? extractTraceContext({ traceparent: row.traceparent }) : undefined,
        attributes: {
          "coursemesh.notifier.channel": row.channel,
          "coursemesh.notifier.notification_id": row.id,
          "coursemesh.notifier.event_type": row.event_type,
          "coursemesh.notifier.attempt": row.attempts + 1,
        },
      },
      async () => {
        if (row.channel === "EMAIL") {
          const unsubscribeUrl = (row.payload as { unsubscribe_url?: string }).unsubscribe_url;
          await email.send({ to: row.recipient, message, messageId: `<${row.id}@${domain}>`, unsubscribeUrl });
        } else {
          await postWebhook(
            { url: row.recipient, id: row.id, body: webhookBody(row, message), secret },
            { timeoutMs: settings.webhookTimeoutMs, guard: settings.guard },
          );
        }
      },
    );
  }

  /** Sends claimed rows and records the outcomes inside the claiming transaction `tx`. */
  async function processClaimed(tx: Tx, rows: DeliveryRow[]): Promise<void> {
    if (rows.length === 0) return;
    const now = new Date();
    const recipients = [...new Set(rows.map((r) => r.recipient))];
    // One round trip (pipelined): the statements still run in this order, so the counts are read
    // under the recipients' locks.
    const [, sentRecently, secrets] = await Promise.all([
      store.lockRecipients(tx, recipients),
      store.sentCountsSince(tx, recipients, new Date(now.getTime() - RATE_WINDOW_MS)),
      store.webhookSecrets(tx, rows.filter((r) => r.channel === "WEBHOOK" && r.subscription_id).map((r) => r.subscription_id!)),
    ]);
    const outcomes: AttemptOutcome[] = [];
    const toSend: DeliveryRow[] = [];
    for (const row of rows) {
      const sent = sentRecently.get(row.recipient) ?? 0;
      if (sent >= capFor(row.channel)) {
        outcomes.push({
          id: row.id,
          status: "SUPPRESSED",
          attempts: row.attempts,
          lastError: `rate cap: ${capFor(row.channel)} notifications to this recipient in the last hour`,
          nextAttemptAt: null,
          sentAt: null,
        });
        continue;
      }
      sentRecently.set(row.recipient, sent + 1);
      toSend.push(row);
    }

    const results = await Promise.allSettled(toSend.map((row) => attempt(row, row.subscription_id ? (secrets.get(row.subscription_id) ?? null) : null)));
    if (settings.crashAt === "after-smtp-accept" && results.some((r, i) => r.status === "fulfilled" && toSend[i]!.channel === "EMAIL")) {
      // Test-only: die the hard way between the server's acceptance and our commit.
      log.warn("NOTIFIER_CRASH_AT=after-smtp-accept: killing the process before the commit");
      process.kill(process.pid, "SIGKILL");
    }

    const failed: { row: DeliveryRow; error: string }[] = [];
    const acceptedAt = new Date();
    results.forEach((result, i) => {
      const row = toSend[i]!;
      const attempts = row.attempts + 1;
      if (result.status === "fulfilled") {
        outcomes.push({ id: row.id, status: "SENT", attempts, lastError: null, nextAttemptAt: null, sentAt: acceptedAt });
        notificationDelaySeconds.observe({ channel: row.channel }, (acceptedAt.getTime() - row.created_at.getTime()) / 1000);
        return;
      }
      const error = result.reason instanceof DeliveryError ? result.reason : new DeliveryError(`cannot send: ${(result.reason as Error)?.message ?? String(result.reason)}`, true);
      if (error.permanent || attempts >= settings.maxAttempts) {
        const lastError = error.permanent ? error.message : `${error.message} (gave up after ${attempts} attempts)`;
        outcomes.push({ id: row.id, status: "FAILED", attempts, lastError, nextAttemptAt: null, sentAt: null });
        failed.push({ row, error: lastError });
        return;
      }
      const delay = Math.max(retryDelayMs(attempts, settings.retryBaseMs, settings.retryMaxMs), Math.min(error.retryAfterMs ?? 0, settings.retryMaxMs));
      outcomes.push({ id: row.id, status: "PENDING", attempts, lastError: error.message, nextAttemptAt: new Date(Date.now() + delay), sentAt: null });
    });
    await store.recordOutcomes(tx, outcomes);
    for (const { row, error } of failed) await deps.deadLetter(tx, { ...row, status: "FAILED", attempts: row.attempts + 1, last_error: error, next_attempt_at: null }, error);
    for (const outcome of outcomes) notificationsTotal.inc({ channel: rows.find((r) => r.id === outcome.id)!.channel, status: outcome.status });
    if (failed.length) log.warn({ failed: failed.map((f) => ({ id: f.row.id, error: f.error })) }, "notifications failed for good");
  }

  async function runBatch(channel: ChannelName): Promise<number> {
    return sql.begin(async (tx) => {
      const rows = await store.claimDueDeliveries(tx, channel, settings.batchSize);
      await processClaimed(tx, rows);
      return rows.length;
    }) as Promise<number>;
  }

  // With two or more workers, one works webhooks (a slow receiver must not hold up emails) and the
  // rest work emails; a single worker does both.
  const channelsOf = (index: number): ChannelName[] =>
    settings.concurrency === 1 ? ["EMAIL", "WEBHOOK"] : index === 0 ? ["WEBHOOK"] : ["EMAIL"];

  async function worker(index: number): Promise<void> {
    let failures = 0;
    const channels = channelsOf(index);
    while (!stopping) {
      const seen = wakeup.generation;
      try {
        let claimed = 0;
        for (const channel of channels) {
          const count = await runBatch(channel);
          // A full batch means more may be waiting: bring in another worker.
          if (count === settings.batchSize) wakeup.notify(channel);
          claimed += count;
        }
        failures = 0;
        if (claimed > 0) continue;
      } catch (error) {
        failures++;
        log.warn({ err: error, worker: index, attempt: failures }, "sender batch failed; retrying");
        await Bun.sleep(Math.min(100 * 2 ** Math.min(failures, 6), settings.pollMs * 5));
        continue;
      }
      await wakeup.wait(channels, settings.pollMs, seen);
    }
  }

  const workers = Array.from({ length: settings.concurrency }, (_, i) => worker(i));

  async function sendTest(input: SendTestInput): Promise<DeliveryRow> {
    const owner = input.principal.subject;
    let recipient: string;
    if (input.channel === "EMAIL") {
      recipient = normalizeEmail(input.address);
      const own = input.principal.email?.trim().toLowerCase() === recipient;
      if (!own && !settings.authDisabled && !(await store.hasActiveEmailSubscription(sql, owner, recipient))) {
        throw failedPrecondition(
          "ADDRESS_NOT_CONFIRMED",
          `test emails go only to your own address or one you subscribed and its owner confirmed; ${recipient} is neither`,
        );
      }
    } else {
      recipient = await normalizeWebhookUrl(input.address, settings.guard);
    }
    const since = new Date(Date.now() - RATE_WINDOW_MS);
    const sent = (await store.sentCountsSince(sql, [recipient], since)).get(recipient) ?? 0;
    if (sent >= capFor(input.channel)) {
      const oldest = await store.oldestSentSince(sql, recipient, since);
      const retryDelay = oldest ? Math.max(1000, oldest.getTime() + RATE_WINDOW_MS - Date.now()) : RATE_WINDOW_MS;
      throw resourceExhausted("RATE_LIMITED", `${recipient} already got ${sent} notifications in the last hour (the cap is ${capFor(input.channel)}); try later`, {
        retryDelayMs: retryDelay,
      });
    }
    const subscriptionId = input.channel === "WEBHOOK" ? await store.webhookSubscriptionOf(sql, owner, recipient) : null;
    const id = Bun.randomUUIDv7();
    const payload = { requested_by: owner };
    await store.insertDelivery(sql, {
      id,
      eventId: null,
      eventType: "test",
      subscriptionId,
      owner,
      channel: input.channel,
      recipient,
      subject: renderDelivery("test", payload).subject,
      payload,
      // If this process dies before the inline attempt, the loop sends it a little later.
      nextAttemptAt: new Date(Date.now() + 30_000),
      traceparent: currentTraceparent() ?? null,
    });
    await sql.begin(async (tx) => {
      const row = await store.claimDelivery(tx, id);
      if (row) await processClaimed(tx, [row]);
    });
    return (await store.getDelivery(sql, id))!;
  }

  return {
    wake(channels = ["EMAIL", "WEBHOOK"]) {
      for (const channel of channels) wakeup.notify(channel);
    },
    sendTest,
    async stop() {
      stopping = true;
      wakeup.notifyAll();
      await Promise.all(workers);
    },
  };
}
