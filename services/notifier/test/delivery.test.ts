/**
 * Events in, emails and webhooks out, through the real notifier process, a real SMTP server, a real
 * webhook receiver and JetStream: content, one message per recipient, signatures, coalescing,
 * permanent failures on the DLQ, SendTest and the unsubscribe link.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { status } from "@grpc/grpc-js";
import { Webhook } from "standardwebhooks";
import { Channel, NotificationStatus, type NotificationServiceClient } from "@coursemesh/proto/coursemesh/notifier/v1/notifier";
import { testToken, type ServiceProcess } from "@coursemesh/shared/testing/harness";
import {
  EnrollmentStatus,
  publishDecided,
  publishHealthError,
  publishJobCompleted,
  publishJobFailed,
  publishPromoted,
  publishSeatsChanged,
} from "./events.ts";
import {
  call,
  createWorld,
  dlqMessage,
  eventually,
  failure,
  notifierClient,
  startNotifier,
  startSmtp,
  startWebhookReceiver,
  type NotifierWorld,
  type TestSmtp,
  type TestWebhookReceiver,
} from "./helpers.ts";

let world: NotifierWorld;
let smtp: TestSmtp;
let hooks: TestWebhookReceiver;
let notifier: ServiceProcess;
let client: NotificationServiceClient;
const tokens: Record<string, string> = {};

const COALESCE_SECONDS = 2;
const uuid = () => Bun.randomUUIDv7();
const emailsTo = (address: string) => smtp.received.filter((m) => m.to.includes(address));

async function subscribe(who: string, channel: Channel, address: string, target: { $case: string; value: string }) {
  return call(client, "subscribe", { channel, address, filter: { target } }, tokens[who]);
}

async function notifications(filter: object) {
  return (await call(client, "listNotifications", { pageSize: 100, ...filter }, tokens.operator)).notifications as any[];
}

beforeAll(async () => {
  world = await createWorld();
  smtp = await startSmtp();
  hooks = startWebhookReceiver();
  notifier = await startNotifier(world, smtp, { NOTIFIER_COALESCE_SECONDS: String(COALESCE_SECONDS), NOTIFIER_MAX_ATTEMPTS: "3" });
  client = notifierClient(notifier.grpcAddress);
  for (const name of ["alice", "bob", "carol", "bounce"]) tokens[name] = await testToken(name, ["student"], `${name}@example.edu`);
  tokens.registrar = await testToken("reg-1", ["registrar"], "registrar@example.edu");
  tokens.operator = await testToken("op-1", ["operator"]);
});

afterAll(async () => {
  client?.close();
  await notifier?.stop();
  await hooks?.stop();
  await smtp?.close();
  await world?.cleanup();
});

describe("each event → one message per subscribed recipient, with content a person wants to read", () => {
  test("a seat change: one email each to alice and bob, a signed webhook, Message-ID and webhook-id = the notification id", async () => {
    const monitor = uuid();
    const target = { $case: "monitorId", value: monitor };
    await subscribe("alice", Channel.CHANNEL_EMAIL, "alice@example.edu", target);
    await subscribe("bob", Channel.CHANNEL_EMAIL, "bob@example.edu", target);
    const hook = await subscribe("alice", Channel.CHANNEL_WEBHOOK, hooks.url, target);
    // Another subscription of alice's address reaching the same event adds no second email.
    await call(client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: "alice@example.edu", filter: { target }, owner: "someone", ownerEmail: "alice@example.edu" }, tokens.operator);

    const eventId = await publishSeatsChanged(world, monitor, 1, 0, 3);
    await eventually(async () => emailsTo("alice@example.edu").length + emailsTo("bob@example.edu").length >= 2 && hooks.received.length >= 1);
    await Bun.sleep(300);
    const [toAlice, ...moreForAlice] = emailsTo("alice@example.edu");
    expect(moreForAlice).toEqual([]);
    expect(emailsTo("bob@example.edu").length).toBe(1);
    expect(toAlice!.subject).toBe("Seats open: CMPUT 201 LEC A1 — 0 → 3 of 30");
    expect(toAlice!.text).toContain("Seats open in CMPUT 201 LEC A1: 0 of 30 → 3 of 30 seats open.");
    expect(toAlice!.text).toContain('The page said "Seats: 3/30" at Tue, 01 Sep 2026 15:04:05 UTC.');
    expect(toAlice!.text).toContain("Registration page: https://registrar.example.edu/classes/cmput201");
    expect(toAlice!.html).toContain('<a href="https://registrar.example.edu/classes/cmput201">');
    expect(toAlice!.headers.get("list-unsubscribe-post")).toBe("List-Unsubscribe=One-Click");

    const sent = await notifications({ eventId });
    expect(sent.length).toBe(3);
    expect(sent.every((n) => n.status === NotificationStatus.NOTIFICATION_STATUS_SENT && n.attempts === 1 && n.sentAt instanceof Date)).toBe(true);
    const aliceNotification = sent.find((n) => n.recipient === "alice@example.edu");
    expect(toAlice!.messageId).toBe(`<${aliceNotification.id}@coursemesh.localhost>`);
    expect(aliceNotification.monitorId).toBe(monitor);
    expect(aliceNotification.eventType).toBe("seats.changed");

    const [delivered] = hooks.received;
    const verified = new Webhook(hook.secret).verify(delivered!.body, delivered!.headers) as any;
    expect(verified.type).toBe("seats.changed");
    expect(verified.data.subject).toBe("Seats open: CMPUT 201 LEC A1 — 0 → 3 of 30");
    expect(verified.data.event.current).toEqual({ open: 3, capacity: 30, raw: "Seats: 3/30" });
    expect(delivered!.headers["webhook-id"]).toBe(sent.find((n) => n.channel === Channel.CHANNEL_WEBHOOK).id);
    // A tampered body fails verification.
    expect(() => new Webhook(hook.secret).verify(delivered!.body.replace("3/30", "9/30"), delivered!.headers)).toThrow();
  });

  test("enrollment outcomes: the student reads “you”, the registrar watching the course reads who", async () => {
    const course = uuid();
    await subscribe("carol", Channel.CHANNEL_EMAIL, "carol@example.edu", { $case: "studentId", value: "carol" });
    await subscribe("registrar", Channel.CHANNEL_EMAIL, "registrar@example.edu", { $case: "courseId", value: course });
    await publishDecided(world, course, 1, "carol", EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED, 4);
    await eventually(async () => emailsTo("carol@example.edu").length >= 1 && emailsTo("registrar@example.edu").length >= 1);
    const [toCarol] = emailsTo("carol@example.edu");
    expect(toCarol!.subject).toBe("Waitlisted: CMPUT 201 LEC A1 — position 4");
    expect(toCarol!.text).toContain("You are on the waitlist of CMPUT 201 LEC A1 (Practical Programming Methodology) at position 4 (the course is full).");
    expect(toCarol!.text).toContain("Seats taken: 30 of 30.");
    expect(emailsTo("registrar@example.edu")[0]!.subject).toBe("Waitlisted: carol in CMPUT 201 LEC A1 — position 4");

    await publishPromoted(world, course, 2, "carol");
    await eventually(async () => emailsTo("carol@example.edu").length >= 2);
    expect(emailsTo("carol@example.edu")[1]!.subject).toBe("You got a seat: CMPUT 201 LEC A1 (from the waitlist)");
    expect(emailsTo("carol@example.edu")[1]!.text).toContain("a seat opened because another student dropped");
  });

  test("ingest job results and monitor health", async () => {
    const job = uuid();
    const failedJob = uuid();
    const monitor = uuid();
    await subscribe("bob", Channel.CHANNEL_EMAIL, "bob@example.edu", { $case: "jobId", value: job });
    await subscribe("bob", Channel.CHANNEL_EMAIL, "bob@example.edu", { $case: "jobId", value: failedJob });
    await subscribe("bob", Channel.CHANNEL_EMAIL, "bob@example.edu", { $case: "monitorId", value: monitor });
    const before = emailsTo("bob@example.edu").length;
    await publishJobCompleted(world, job);
    await publishJobFailed(world, failedJob);
    await publishHealthError(world, monitor, 7);
    await eventually(async () => emailsTo("bob@example.edu").length >= before + 3);
    const byJob = await notifications({ jobId: job });
    expect(byJob.map((n) => n.subject)).toEqual(["Course outline ready: Linear Algebra I — 3 modules"]);
    const subjects = emailsTo("bob@example.edu").slice(before).map((m) => m.subject).sort();
    expect(subjects).toEqual(
      ["Course outline ready: Linear Algebra I — 3 modules", "Course upload failed: Linear Algebra I", "Monitor needs attention: CMPUT 201 LEC A1 is failing"].sort(),
    );
    const done = emailsTo("bob@example.edu").find((m) => m.subject.startsWith("Course outline ready"))!;
    expect(done.text).toContain("1. Vectors\n2. Matrices\n3. Eigenvalues");
    const broken = emailsTo("bob@example.edu").find((m) => m.subject.startsWith("Course upload failed"))!;
    expect(broken.text).toContain("syllabus.pdf is encrypted; upload it without a password");
  });
});

describe("coalescing seat emails per monitor and recipient", () => {
  test("first at once; later ones in the window collapse into one trailing email with the latest value; full again is told", async () => {
    const monitor = uuid();
    await subscribe("alice", Channel.CHANNEL_EMAIL, "alice@example.edu", { $case: "monitorId", value: monitor });
    const mine = () => emailsTo("alice@example.edu").filter((m) => m.text.includes("CMPUT 201") && m.headers.get("list-unsubscribe")?.includes("token"));
    const start = mine().length;
    const startedAt = Date.now();
    await publishSeatsChanged(world, monitor, 1, 0, 3);
    await eventually(async () => (await notifications({ monitorId: monitor })).some((n) => n.status === NotificationStatus.NOTIFICATION_STATUS_SENT));
    await publishSeatsChanged(world, monitor, 2, 3, 5);
    await publishSeatsChanged(world, monitor, 3, 5, 2);
    await eventually(async () => (await notifications({ monitorId: monitor })).filter((n) => n.status === NotificationStatus.NOTIFICATION_STATUS_SENT).length >= 2, 10_000);
    const history = await notifications({ monitorId: monitor });
    expect(history.map((n) => n.status)).toEqual([
      NotificationStatus.NOTIFICATION_STATUS_SENT,
      NotificationStatus.NOTIFICATION_STATUS_COALESCED,
      NotificationStatus.NOTIFICATION_STATUS_SENT,
    ]);
    const trailing = history[0];
    expect(trailing.subject).toBe("Seats changed: CMPUT 201 LEC A1 — 3 → 2 of 30");
    // The trailing email waited for the window that the first one opened.
    expect(trailing.sentAt.getTime() - history[2].sentAt.getTime()).toBeGreaterThanOrEqual(COALESCE_SECONDS * 1000 - 100);
    expect(Date.now() - startedAt).toBeLessThan(COALESCE_SECONDS * 1000 + 6000);
    const trailingEmail = smtp.received.find((m) => m.messageId === `<${trailing.id}@coursemesh.localhost>`)!;
    expect(trailingEmail.text).toContain("2 changes within a few minutes are combined in this email");

    // After the window, the section filling up goes out at once, as "full again".
    await Bun.sleep(COALESCE_SECONDS * 1000);
    await publishSeatsChanged(world, monitor, 4, 2, 0);
    await eventually(async () => (await notifications({ monitorId: monitor })).filter((n) => n.status === NotificationStatus.NOTIFICATION_STATUS_SENT).length >= 3, 5000);
    expect((await notifications({ monitorId: monitor }))[0].subject).toBe("Section full again: CMPUT 201 LEC A1 — 2 → 0 of 30");
    expect(mine().length - start).toBe(3);
  });
});

describe("failures", () => {
  test("a permanent SMTP 5xx makes the notification FAILED with the error, and a copy goes to the DLQ", async () => {
    smtp.rejectRecipient = (address) => (address === "bounce@example.edu" ? { code: 550, message: "5.1.1 mailbox unavailable" } : undefined);
    const job = uuid();
    await subscribe("bounce", Channel.CHANNEL_EMAIL, "bounce@example.edu", { $case: "jobId", value: job });
    await publishJobCompleted(world, job);
    const [failed] = await eventually(async () => {
      const found = await notifications({ jobId: job, status: NotificationStatus.NOTIFICATION_STATUS_FAILED });
      return found.length ? found : undefined;
    });
    // One attempt, unless a pooled connection dropped under load first (a transient error, retried).
    expect(failed.attempts).toBeGreaterThanOrEqual(1);
    expect(failed.lastError).toContain("SMTP 550");
    expect(failed.lastError).toContain("mailbox unavailable");
    expect(failed.nextAttemptAt).toBeUndefined();

    // The copy on the DLQ stream, found by the notification's id among whatever else is there.
    type Copy = { notification: { id: string; status: string; lastError: string }; error: string };
    const body = (await dlqMessage(world, "dlq.notifier.sender", (m) => m.json<Copy>().notification.id === failed.id)).json<Copy>();
    expect(body.notification.id).toBe(failed.id);
    expect(body.notification.status).toBe("NOTIFICATION_STATUS_FAILED");
    expect(body.error).toContain("SMTP 550");
  });

  test("a transient SMTP 4xx is retried with backoff, then delivered", async () => {
    let refusals = 0;
    smtp.rejectRecipient = (address) => (address === "carol@example.edu" && refusals++ < 2 ? { code: 451, message: "4.3.0 try again later" } : undefined);
    const job = uuid();
    await subscribe("carol", Channel.CHANNEL_EMAIL, "carol@example.edu", { $case: "jobId", value: job });
    await publishJobFailed(world, job);
    const [sent] = await eventually(async () => {
      const found = await notifications({ jobId: job, status: NotificationStatus.NOTIFICATION_STATUS_SENT });
      return found.length ? found : undefined;
    });
    expect(sent.attempts).toBe(3);
    expect(refusals).toBeGreaterThanOrEqual(2);
  });
});

describe("SendTest", () => {
  test("to your own address: SENT after the first attempt", async () => {
    const reply = await call(client, "sendTest", { channel: Channel.CHANNEL_EMAIL, address: "alice@example.edu" }, tokens.alice);
    expect(reply.notification.status).toBe(NotificationStatus.NOTIFICATION_STATUS_SENT);
    expect(reply.notification.eventType).toBe("test");
    expect(smtp.received.some((m) => m.messageId === `<${reply.notification.id}@coursemesh.localhost>` && m.subject === "coursemesh test notification")).toBe(true);
  });

  test("to an address nobody confirmed: FAILED_PRECONDITION ADDRESS_NOT_CONFIRMED; garbage: ADDRESS_INVALID", async () => {
    const error = await failure(call(client, "sendTest", { channel: Channel.CHANNEL_EMAIL, address: "stranger@example.org" }, tokens.alice));
    expect(error.code).toBe(status.FAILED_PRECONDITION);
    expect(error.reason).toBe("ADDRESS_NOT_CONFIRMED");
    const invalid = await failure(call(client, "sendTest", { channel: Channel.CHANNEL_EMAIL, address: "@@" }, tokens.alice));
    expect(invalid.reason).toBe("ADDRESS_INVALID");
    const noChannel = await failure(call(client, "sendTest", { address: "alice@example.edu" }, tokens.alice));
    expect(noChannel.reason).toBe("CHANNEL_REQUIRED");
  });

  test("a webhook answering 503 is PENDING with the error, to be retried", async () => {
    hooks.status = 503;
    try {
      const reply = await call(client, "sendTest", { channel: Channel.CHANNEL_WEBHOOK, address: hooks.url }, tokens.alice);
      expect(reply.notification.status).toBe(NotificationStatus.NOTIFICATION_STATUS_PENDING);
      expect(reply.notification.lastError).toContain("HTTP 503");
      expect(reply.notification.nextAttemptAt).toBeInstanceOf(Date);
    } finally {
      hooks.status = 200;
    }
  });
});

describe("unsubscribing from an email", () => {
  test("the one-click List-Unsubscribe POST removes the subscription; later events send nothing", async () => {
    const monitor = uuid();
    await subscribe("bob", Channel.CHANNEL_EMAIL, "bob@example.edu", { $case: "monitorId", value: monitor });
    const eventId = await publishSeatsChanged(world, monitor, 1, undefined, 4);
    const email = await eventually(async () => {
      const [n] = await notifications({ eventId });
      return n?.status === NotificationStatus.NOTIFICATION_STATUS_SENT ? smtp.received.find((m) => m.messageId === `<${n.id}@coursemesh.localhost>`) : undefined;
    });
    expect(email.subject).toBe("Seats open: CMPUT 201 LEC A1 — 4 of 30");
    const link = /<([^>]+)>/.exec(String(email.headers.get("list-unsubscribe")))![1]!.replace("http://notifier.test", notifier.httpUrl);
    const response = await fetch(link, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: "List-Unsubscribe=One-Click" });
    expect(response.status).toBe(200);
    const left = await call(client, "listSubscriptions", { filter: { target: { $case: "monitorId", value: monitor } } }, tokens.bob);
    expect(left.subscriptions).toEqual([]);
    const next = await publishSeatsChanged(world, monitor, 2, 4, 6);
    await Bun.sleep(1000);
    expect(await notifications({ eventId: next })).toEqual([]);
  });
});

describe("ListNotifications", () => {
  test("pages newest first with filters; each caller sees only their own history", async () => {
    const all = await notifications({ recipient: "Alice@Example.edu" });
    expect(all.length).toBeGreaterThanOrEqual(4);
    expect(all.every((n) => n.recipient === "alice@example.edu")).toBe(true);
    const paged: string[] = [];
    let pageToken = "";
    do {
      const page = await call(client, "listNotifications", { recipient: "alice@example.edu", pageSize: 3, pageToken }, tokens.operator);
      paged.push(...page.notifications.map((n: any) => n.id));
      pageToken = page.nextPageToken;
    } while (pageToken);
    expect(paged).toEqual(all.map((n) => n.id));

    const bobs = (await call(client, "listNotifications", { pageSize: 1000 }, tokens.bob)).notifications as any[];
    expect(bobs.length).toBeGreaterThan(0);
    expect(bobs.every((n) => n.recipient === "bob@example.edu")).toBe(true);
    const sentOnly = (await call(client, "listNotifications", { status: NotificationStatus.NOTIFICATION_STATUS_SENT }, tokens.bob)).notifications as any[];
    expect(sentOnly.every((n) => n.status === NotificationStatus.NOTIFICATION_STATUS_SENT)).toBe(true);

    const page = await call(client, "listNotifications", { pageSize: 1 }, tokens.alice);
    const error = await failure(call(client, "listNotifications", { pageSize: 1, pageToken: page.nextPageToken, monitorId: uuid() }, tokens.alice));
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    expect(error.reason).toBe("INVALID_PAGE_TOKEN");
  });
});
