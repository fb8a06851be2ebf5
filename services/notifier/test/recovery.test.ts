/**
 * Nothing lost, at most one resend: the notifier is SIGKILLed at chosen points (NOTIFIER_CRASH_AT,
 * test only) and restarted on the same database and streams; the SMTP server is down for a while;
 * a flood meets the per-recipient rate cap.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { status } from "@grpc/grpc-js";
import { Channel, NotificationStatus, type NotificationServiceClient } from "@coursemesh/proto/coursemesh/notifier/v1/notifier";
import { testToken, type ServiceProcess } from "@coursemesh/shared/testing/harness";
import { publishJobCompleted } from "./events.ts";
import { call, createWorld, eventually, failure, notifierClient, startNotifier, startSmtp, type NotifierWorld, type TestSmtp } from "./helpers.ts";

let world: NotifierWorld;
let smtp: TestSmtp;
let alice: string;
let operator: string;
const running: ServiceProcess[] = [];
const clients: NotificationServiceClient[] = [];

async function start(smtpUrl: string, env: Record<string, string> = {}) {
  const notifier = await startNotifier(world, { url: smtpUrl }, env);
  running.push(notifier);
  const client = notifierClient(notifier.grpcAddress);
  clients.push(client);
  return { notifier, client };
}

async function notificationsOf(client: NotificationServiceClient, filter: object) {
  return (await call(client, "listNotifications", { pageSize: 100, ...filter }, operator)).notifications as any[];
}

async function exitCode(notifier: ServiceProcess, timeoutMs = 15_000): Promise<number | null> {
  const timer = Bun.sleep(timeoutMs).then(() => "timeout" as const);
  const result = await Promise.race([notifier.process.exited, timer]);
  if (result === "timeout") throw new Error("the notifier did not crash at the chosen point");
  return notifier.process.signalCode ? 137 : result;
}

beforeAll(async () => {
  world = await createWorld();
  smtp = await startSmtp();
  alice = await testToken("alice", ["student"], "alice@example.edu");
  operator = await testToken("op-1", ["operator"]);
});

afterAll(async () => {
  for (const client of clients) client.close();
  for (const notifier of running) if (notifier.process.exitCode === null && !notifier.process.killed) await notifier.stop();
  await smtp?.close();
  await world?.cleanup();
});

describe("SIGKILL at chosen points, then restart", () => {
  test("after fan-out, before send (and before the ack): the email goes out once after the restart", async () => {
    // A long poll: only the post-ack wake-up could start a send, and the crash comes before it.
    const crashing = await start(smtp.url, { NOTIFIER_CRASH_AT: "after-fanout", NOTIFIER_POLL_MS: "60000" });
    const job = Bun.randomUUIDv7();
    await call(crashing.client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: "alice@example.edu", filter: { target: { $case: "jobId", value: job } } }, alice);
    const eventId = await publishJobCompleted(world, job);
    expect(await exitCode(crashing.notifier)).toBe(137);
    expect(smtp.received.filter((m) => m.to.includes("alice@example.edu"))).toEqual([]);

    const restarted = await start(smtp.url);
    // The event comes again (it was never acked); the delivery row was already committed and is not duplicated.
    const [sent] = await eventually(async () => {
      const rows = await notificationsOf(restarted.client, { eventId });
      return rows.length && rows.every((n) => n.status === NotificationStatus.NOTIFICATION_STATUS_SENT) ? rows : undefined;
    });
    await Bun.sleep(500);
    expect((await notificationsOf(restarted.client, { eventId })).length).toBe(1);
    const copies = smtp.received.filter((m) => m.messageId === `<${sent.id}@coursemesh.localhost>`);
    expect(copies.length).toBe(1);
    expect(copies[0]!.subject).toBe("Course outline ready: Linear Algebra I — 3 modules");
    expect(await restarted.notifier.stop()).toBe(0);
  });

  test("after SMTP acceptance, before the commit: one resend, with the same Message-ID", async () => {
    const crashing = await start(smtp.url, { NOTIFIER_CRASH_AT: "after-smtp-accept" });
    const job = Bun.randomUUIDv7();
    await call(crashing.client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: "alice@example.edu", filter: { target: { $case: "jobId", value: job } } }, alice);
    const before = smtp.received.length;
    const eventId = await publishJobCompleted(world, job);
    expect(await exitCode(crashing.notifier)).toBe(137);
    expect(smtp.received.length).toBe(before + 1);
    const firstCopy = smtp.received[before]!;

    const restarted = await start(smtp.url);
    const [sent] = await eventually(async () => {
      const rows = await notificationsOf(restarted.client, { eventId });
      return rows[0]?.status === NotificationStatus.NOTIFICATION_STATUS_SENT ? rows : undefined;
    });
    await Bun.sleep(500);
    const copies = smtp.received.slice(before);
    expect(copies.length).toBe(2);
    expect(copies.map((m) => m.messageId)).toEqual([firstCopy.messageId, firstCopy.messageId]);
    expect(firstCopy.messageId).toBe(`<${sent.id}@coursemesh.localhost>`);
    expect(sent.attempts).toBe(1);
    expect(await restarted.notifier.stop()).toBe(0);
  });
});

describe("an SMTP outage and a flood", () => {
  let client: NotificationServiceClient;
  let downSmtpPort: number;

  beforeAll(async () => {
    // A port with nothing listening (yet).
    const probe = await startSmtp();
    downSmtpPort = probe.port;
    await probe.close();
    ({ client } = await start(`smtp://127.0.0.1:${downSmtpPort}`, { NOTIFIER_MAX_ATTEMPTS: "10", NOTIFIER_EMAIL_RATE_PER_HOUR: "3" }));
  });

  test("SMTP down for a while: retried with backoff, then delivered once it is back", async () => {
    const job = Bun.randomUUIDv7();
    await call(client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: "alice@example.edu", filter: { target: { $case: "jobId", value: job } } }, alice);
    const eventId = await publishJobCompleted(world, job);
    const [waiting] = await eventually(async () => {
      const rows = await notificationsOf(client, { eventId });
      return rows[0]?.attempts >= 2 ? rows : undefined;
    });
    expect(waiting.status).toBe(NotificationStatus.NOTIFICATION_STATUS_PENDING);
    expect(waiting.lastError).toMatch(/SMTP (ECONNECTION|ESOCKET)/);
    expect(waiting.nextAttemptAt).toBeInstanceOf(Date);

    const back = await startSmtp({ port: downSmtpPort });
    try {
      const [sent] = await eventually(async () => {
        const rows = await notificationsOf(client, { eventId });
        return rows[0]?.status === NotificationStatus.NOTIFICATION_STATUS_SENT ? rows : undefined;
      });
      expect(sent.attempts).toBeGreaterThanOrEqual(3);
      expect(back.received.map((m) => m.messageId)).toEqual([`<${sent.id}@coursemesh.localhost>`]);
    } finally {
      await back.close();
    }
  });

  test("a flood to one inbox stops at the rate cap: the rest is SUPPRESSED, and SendTest says when to retry", async () => {
    const flooded = await testToken("dave", ["student"], "dave@example.edu");
    const back = await startSmtp({ port: downSmtpPort });
    try {
      const jobs = Array.from({ length: 5 }, () => Bun.randomUUIDv7());
      for (const job of jobs) {
        await call(client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: "dave@example.edu", filter: { target: { $case: "jobId", value: job } } }, flooded);
      }
      for (const job of jobs) await publishJobCompleted(world, job);
      const rows = await eventually(async () => {
        const all = await notificationsOf(client, { recipient: "dave@example.edu" });
        return all.length === 5 && all.every((n) => n.status !== NotificationStatus.NOTIFICATION_STATUS_PENDING) ? all : undefined;
      });
      expect(rows.filter((n) => n.status === NotificationStatus.NOTIFICATION_STATUS_SENT).length).toBe(3);
      const suppressed = rows.filter((n) => n.status === NotificationStatus.NOTIFICATION_STATUS_SUPPRESSED);
      expect(suppressed.length).toBe(2);
      expect(suppressed[0].lastError).toContain("rate cap: 3 notifications to this recipient in the last hour");
      expect(back.received.length).toBe(3);

      const error = await failure(call(client, "sendTest", { channel: Channel.CHANNEL_EMAIL, address: "dave@example.edu" }, flooded));
      expect(error.code).toBe(status.RESOURCE_EXHAUSTED);
      expect(error.reason).toBe("RATE_LIMITED");
      expect(error.retryDelayMs).toBeGreaterThan(59 * 60 * 1000);
    } finally {
      await back.close();
    }
  });
});
