/** The notifier's pure parts: message content, email composition, address checks, signatures, backoff, error reading. */
import { describe, expect, test } from "bun:test";
import { simpleParser } from "mailparser";
import MailComposer from "nodemailer/lib/mail-composer";
import { Webhook } from "standardwebhooks";
import { eventTypeOf, recipientsOf } from "../src/fanout.ts";
import { renderEventMessage, seatHeadline } from "../src/messages.ts";
import { normalizeEmail, normalizeWebhookUrl, validateTarget } from "../src/recipients.ts";
import { effectiveRetentionDays, minimumRetentionDays } from "../src/retention.ts";
import { retryDelayMs } from "../src/sender.ts";
import { classifySmtpError, composeEmail, fromHeaderOf, mailDomain } from "../src/smtp.ts";
import type { SubscriptionRow } from "../src/store.ts";
import { signWebhook } from "../src/webhooks.ts";

const seats = (open?: number, capacity = 30) => ({ open, capacity, raw: open === undefined ? "Seats: see page" : `Seats: ${open}/${capacity}` });
const seatEvent = (previous: object | undefined, current: object) => ({
  event: { label: "CMPUT 201 LEC A1", url: "https://registrar.example.edu/c", previous, current, observedAt: "2026-09-01T15:04:05Z" },
});

describe("seat emails say what changed", () => {
  const cases: [string, object | undefined, object, string][] = [
    ["seats open", seats(0), seats(3), "Seats open: CMPUT 201 LEC A1 — 0 → 3 of 30"],
    ["full again", seats(3), seats(0), "Section full again: CMPUT 201 LEC A1 — 3 → 0 of 30"],
    ["more seats", seats(3), seats(5), "Seats changed: CMPUT 201 LEC A1 — 3 → 5 of 30"],
    ["first reading", undefined, seats(4), "Seats open: CMPUT 201 LEC A1 — 4 of 30"],
    ["first reading, full", undefined, seats(0), "Section full: CMPUT 201 LEC A1 — 0 of 30"],
    ["unparsed text", seats(2), seats(undefined), 'Seats changed: CMPUT 201 LEC A1 — 2 of 30 → "Seats: see page"'],
  ];
  for (const [name, previous, current, subject] of cases) {
    test(name, () => expect(renderEventMessage("seats.changed", seatEvent(previous, current)).subject).toBe(subject));
  }

  test("event text cannot inject headers or markup", () => {
    const message = renderEventMessage("seats.changed", {
      event: { label: "CMPUT 201\r\nBcc: x@evil.test <script>", url: "https://e.example/", previous: seats(0), current: seats(1) },
    });
    expect(message.subject).not.toMatch(/[\r\n]/);
    expect(message.html).not.toContain("<script>");
    expect(message.html).toContain("&lt;script&gt;");
  });

  test("seatHeadline treats an unknown count as a change, not an opening", () => {
    expect(seatHeadline(seats(1) as never, seats(undefined) as never)).toBe("Seats changed");
  });
});

describe("address checks", () => {
  test("emails are trimmed and lower-cased; nonsense is ADDRESS_INVALID", () => {
    expect(normalizeEmail("  Student.One@Example.EDU ")).toBe("student.one@example.edu");
    for (const bad of ["", "no-at-sign", "a@b", "a b@example.edu", "a@example.edu\nBcc: b@example.edu", `${"x".repeat(250)}@example.edu`]) {
      expect(() => normalizeEmail(bad)).toThrow();
    }
  });

  test("webhook URLs pass the SSRF guard (stub resolver: no DNS in unit tests)", async () => {
    const publicResolver = async () => ["93.184.215.14"];
    expect(await normalizeWebhookUrl("https://hooks.example.com/x", { allowPrivate: false, resolve: publicResolver })).toBe("https://hooks.example.com/x");
    const privateResolver = async () => ["10.0.0.8"];
    await expect(normalizeWebhookUrl("https://internal.example.com/x", { allowPrivate: false, resolve: privateResolver })).rejects.toMatchObject({ reason: "URL_NOT_ALLOWED" });
    await expect(normalizeWebhookUrl("http://169.254.169.254/latest/meta-data", { allowPrivate: false, resolve: publicResolver })).rejects.toMatchObject({
      reason: "URL_NOT_ALLOWED",
    });
    await expect(normalizeWebhookUrl("http://[::ffff:127.0.0.1]/", { allowPrivate: false, resolve: publicResolver })).rejects.toMatchObject({ reason: "URL_NOT_ALLOWED" });
  });

  test("filter ids: UUIDs for monitors, courses and jobs; token subjects for students", () => {
    expect(validateTarget({ kind: "monitor", value: "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B" }).value).toBe("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
    expect(validateTarget({ kind: "student", value: "auth0|Student-1" }).value).toBe("auth0|Student-1");
    expect(() => validateTarget({ kind: "course", value: "CMPUT 201" })).toThrow();
    expect(() => validateTarget({ kind: "student", value: "two words" })).toThrow();
  });
});

describe("webhook signatures", () => {
  test("a Standard Webhooks library verifies what we sign, with a whsec_ secret and with a plain one", () => {
    const body = JSON.stringify({ type: "test", data: { hello: "world" } });
    const timestamp = Math.floor(Date.now() / 1000);
    const whsec = `whsec_${Buffer.from("0123456789abcdef0123456789abcdef").toString("base64")}`;
    const headers = { "webhook-id": "msg_1", "webhook-timestamp": String(timestamp), "webhook-signature": signWebhook(whsec, "msg_1", timestamp, body) };
    expect(new Webhook(whsec).verify(body, headers)).toEqual(JSON.parse(body));
    const plain = "a-plain-secret-of-some-length";
    const plainHeaders = { ...headers, "webhook-signature": signWebhook(plain, "msg_1", timestamp, body) };
    expect(new Webhook(plain, { format: "raw" }).verify(body, plainHeaders)).toEqual(JSON.parse(body));
  });
});

describe("retries", () => {
  test("backoff doubles per attempt, capped, with equal jitter", () => {
    expect(retryDelayMs(1, 1000, 60_000, () => 0)).toBe(500);
    expect(retryDelayMs(1, 1000, 60_000, () => 1)).toBe(1000);
    expect(retryDelayMs(4, 1000, 60_000, () => 1)).toBe(8000);
    expect(retryDelayMs(30, 1000, 60_000, () => 1)).toBe(60_000);
  });

  test("SMTP replies: 5xx permanent, 4xx and connection trouble transient, bad credentials transient", () => {
    expect(classifySmtpError({ responseCode: 550, response: "550 5.1.1 no such user" }).permanent).toBe(true);
    expect(classifySmtpError({ responseCode: 451, response: "451 try later" }).permanent).toBe(false);
    expect(classifySmtpError({ code: "ECONNECTION", message: "connect ECONNREFUSED" }).permanent).toBe(false);
    expect(classifySmtpError({ code: "EAUTH", responseCode: 535, response: "535 bad credentials" }).permanent).toBe(false);
    expect(mailDomain("coursemesh <notifications@Mail.Example.edu>")).toBe("mail.example.edu");
  });
});

describe("fan-out", () => {
  test("subjects map to notification types; course.created notifies nobody", () => {
    expect(eventTypeOf("seats.changed.0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")).toBe("seats.changed");
    expect(eventTypeOf("ingest.job.failed.x")).toBe("ingest.job.failed");
    expect(eventTypeOf("ingest.course.created.x")).toBeUndefined();
  });

  test("one message per channel and address; the student's own subscription decides the voice", () => {
    const row = (id: string, kind: SubscriptionRow["filter_kind"], address: string) => ({ id, filter_kind: kind, channel: "EMAIL", address }) as SubscriptionRow;
    const chosen = recipientsOf([row("1", "course", "a@example.edu"), row("2", "student", "a@example.edu"), row("3", "course", "b@example.edu")]);
    expect(chosen.map((s) => s.id).sort()).toEqual(["2", "3"]);
  });
});

describe("email composition", () => {
  const from = "Coursemesh — Ünï Notifications <notifications@coursemesh.localhost>";
  const unsubscribeUrl = `http://127.0.0.1:8083/v1/unsubscribe?token=${"A".repeat(43)}`;
  const messages = [
    { subject: "Enrolled: CMPUT 201 LEC A1", text: "You are enrolled.\nSeats taken: 30 of 30.", html: "<p>You are enrolled.</p>" },
    {
      subject: 'Seats open: CMPUT 201 — 0 → 3 of 30, "quoted" =?utf-8?q?x?= and a long tail that goes past seventy-six characters',
      text: `Ünïcödé — text\n\n${"long ".repeat(40)}\n.\n.a leading dot\ntrailing space `,
      html: `<p>${"x".repeat(300)}</p>\n<p>—</p>`,
    },
    { subject: "登録完了: 線形代数", text: "日本語の本文", html: "<b>日本語</b>" },
  ];
  const read = async (raw: Buffer) => {
    const mail = await simpleParser(raw);
    const header = (name: string) => mail.headers.get(name);
    return { subject: mail.subject, from: mail.from?.text, to: mail.to && !Array.isArray(mail.to) ? mail.to.text : undefined, messageId: mail.messageId, text: mail.text, html: mail.html, unsubscribe: header("list-unsubscribe"), post: header("list-unsubscribe-post"), auto: header("auto-submitted") };
  };

  test.each(messages.map((m) => [m.subject, m] as const))("%s: a mail reader gets what MailComposer would have written", async (_name, message) => {
    const email = { to: "student-1@example.edu", message, messageId: "<0192f0a1-b2c3-7d4e-8f5a-6b7c8d9e0f1a@coursemesh.localhost>", unsubscribeUrl };
    const raw = composeEmail(email, await fromHeaderOf(from))!;
    const reference = await new MailComposer({
      from,
      to: email.to,
      subject: message.subject,
      text: message.text,
      html: message.html,
      messageId: email.messageId,
      headers: { "Auto-Submitted": "auto-generated", "List-Unsubscribe": `<${unsubscribeUrl}>`, "List-Unsubscribe-Post": "List-Unsubscribe=One-Click" },
    })
      .compile()
      .build();
    expect(await read(raw)).toEqual(await read(reference));
    // On the wire: CRLF line ends only, and lines within SMTP's limit.
    const wire = raw.toString("latin1");
    expect(wire).not.toMatch(/[^\r]\n|\r[^\n]/);
    expect(Math.max(...wire.split("\r\n").map((line) => line.length))).toBeLessThanOrEqual(998);
  });

  test("a recipient or Message-ID that is not plain ASCII is left to MailComposer", async () => {
    const header = await fromHeaderOf(from);
    const message = messages[0]!;
    expect(composeEmail({ to: "élève@example.edu", message, messageId: "<1@x>" }, header)).toBeUndefined();
    expect(composeEmail({ to: "a@example.edu", message, messageId: "<1 2@x>" }, header)).toBeUndefined();
    expect(composeEmail({ to: "a@example.edu", message, messageId: "<1@x>" }, header)).toBeInstanceOf(Buffer);
  });
});

describe("history retention", () => {
  test("is longer than the longest redelivery window of the consumed streams, the coalescing window and the rate-cap hour", () => {
    // ENROLLMENT and INGEST keep events 14 days; SEATS 7.
    expect(minimumRetentionDays(["SEATS", "ENROLLMENT", "INGEST"], 60_000)).toBe(15);
    expect(minimumRetentionDays(["SEATS"], 60_000)).toBe(8);
    expect(minimumRetentionDays([], 0)).toBe(1);
    expect(minimumRetentionDays([], 86_400_000)).toBe(2);
  });

  test("a configured retention shorter than the minimum is raised to it, and says so", () => {
    expect(effectiveRetentionDays(90, 15)).toEqual({ days: 90, raised: false });
    expect(effectiveRetentionDays(15, 15)).toEqual({ days: 15, raised: false });
    expect(effectiveRetentionDays(3, 15)).toEqual({ days: 15, raised: true });
  });
});
