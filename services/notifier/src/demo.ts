/**
 * The notifier's part of `bun run dev`: a local mail catcher on 127.0.0.1:1025 (the notifier's
 * default NOTIFIER_SMTP_URL), a student who subscribes to their own enrollment outcomes, a test
 * email, and — when the allocator is up — a real enrollment whose outcome arrives by email.
 */
import { SERVICE_PORTS } from "@coursemesh/shared/config";
import { mintToken } from "@coursemesh/shared/auth";
import { createClient, unary } from "@coursemesh/shared/grpc/client";
import { EnrollmentServiceClient, CreateCourseRequest, EnrollRequest } from "@coursemesh/proto/coursemesh/allocator/v1/allocator";
import {
  Channel,
  ListNotificationsRequest,
  NotificationServiceClient,
  NotificationStatus,
  SendTestRequest,
  SubscribeRequest,
} from "@coursemesh/proto/coursemesh/notifier/v1/notifier";

interface Caught {
  to: string;
  subject: string;
}

/** Starts a mail catcher on 127.0.0.1:1025 unless something (Mailpit, MailHog) already listens there. */
async function startMailCatcher(say: (line: string) => void): Promise<Caught[] | undefined> {
  const caught: Caught[] = [];
  try {
    const { SMTPServer } = await import("smtp-server");
    const server = new SMTPServer({
      authOptional: true,
      disabledCommands: ["STARTTLS"],
      disableReverseLookup: true,
      logger: false,
      onData(stream, session, callback) {
        let head = "";
        stream.on("data", (chunk: Buffer) => {
          if (head.length < 8192) head += chunk.toString("latin1");
        });
        stream.on("end", () => {
          const subject = decodeSubject(/^Subject: (.*(?:\r\n[ \t].*)*)/im.exec(head)?.[1] ?? "");
          const to = session.envelope.rcptTo.map((r) => r.address).join(", ");
          caught.push({ to, subject });
          say(`📧 email to ${to}: "${subject}"`);
          callback();
        });
      },
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(1025, "127.0.0.1", () => resolve());
    });
    say("notifier: a mail catcher listens on smtp://127.0.0.1:1025 and prints what the notifier sends");
    return caught;
  } catch (error) {
    say(`notifier: no mail catcher of ours on 1025 (${(error as Error).message}); emails go to whatever listens there`);
    return undefined;
  }
}

// Subjects with non-ASCII text (— →) arrive as RFC 2047 encoded words.
function decodeSubject(raw: string): string {
  return raw
    .replace(/\r\n[ \t]/g, "")
    .replace(/=\?utf-8\?([bq])\?([^?]*)\?=\s*/gi, (_, encoding: string, text: string) =>
      encoding.toLowerCase() === "b"
        ? Buffer.from(text, "base64").toString("utf8")
        : Buffer.from(text.replace(/_/g, " ").replace(/=([0-9a-f]{2})/gi, (_m, hex: string) => String.fromCharCode(parseInt(hex, 16))), "latin1").toString("utf8"),
    )
    .trim();
}

async function waitFor<T>(check: () => T | undefined, timeoutMs: number): Promise<T | undefined> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = check();
    if (value !== undefined) return value;
    await Bun.sleep(100);
  }
  return undefined;
}

/** Shows notifications doing their job against the local notifier (and allocator, if up). */
export async function runDemo({ secret, say }: { secret: string; say: (line: string) => void }): Promise<void> {
  const caught = await startMailCatcher(say);
  const student = await mintToken({ subject: "student-1", roles: ["student"], email: "student-1@example.edu", secret });
  const notifier = createClient(NotificationServiceClient, `127.0.0.1:${SERVICE_PORTS.notifier.grpc}`, { caller: "dev", defaultDeadlineMs: 10_000 });
  try {
    const subscribed = await unary(
      notifier.subscribe.bind(notifier),
      SubscribeRequest.fromPartial({ channel: Channel.CHANNEL_EMAIL, address: "student-1@example.edu", filter: { target: { $case: "studentId", value: "student-1" } } }),
      { token: student },
    );
    say(`notifier: student-1 subscribed to their enrollment outcomes (${subscribed.subscription!.id}, active at once: it is their own address)`);

    const test = await unary(notifier.sendTest.bind(notifier), SendTestRequest.fromPartial({ channel: Channel.CHANNEL_EMAIL, address: "student-1@example.edu" }), { token: student });
    say(`notifier: SendTest → ${NotificationStatus[test.notification!.status]}${test.notification!.lastError ? ` (${test.notification!.lastError})` : ""}`);

    const allocator = createClient(EnrollmentServiceClient, `127.0.0.1:${SERVICE_PORTS.allocator.grpc}`, { caller: "dev", defaultDeadlineMs: 10_000 });
    try {
      const registrar = await mintToken({ subject: "registrar-1", roles: ["registrar"], secret });
      const { course } = await unary(
        allocator.createCourse.bind(allocator),
        CreateCourseRequest.fromPartial({ code: `DEMO ${Date.now() % 1000} LEC A1`, title: "Notifications 101", capacity: 1 }),
        { token: registrar },
      );
      await unary(
        allocator.enroll.bind(allocator),
        EnrollRequest.fromPartial({ idempotencyKey: crypto.randomUUID(), studentId: "student-1", courseId: course!.id, wait: true }),
        { token: student },
      );
      say(`notifier: student-1 enrolled in ${course!.code} through the allocator; waiting for the email…`);
      if (caught) {
        const email = await waitFor(() => caught.find((m) => m.subject.startsWith("Enrolled:")), 15_000);
        say(email ? `notifier: the enrollment reached the inbox: "${email.subject}"` : "notifier: no enrollment email within 15 s (is the allocator's relay running?)");
      }
    } catch (error) {
      say(`notifier: skipped the enrollment part (${(error as Error).message})`);
    } finally {
      allocator.close();
    }

    const history = await unary(notifier.listNotifications.bind(notifier), ListNotificationsRequest.fromPartial({ pageSize: 5 }), { token: student });
    say("notifier: student-1's latest notifications (ListNotifications):");
    for (const n of history.notifications) console.log(`  ${NotificationStatus[n.status].replace("NOTIFICATION_STATUS_", "").padEnd(9)} ${n.subject}`);
  } finally {
    notifier.close();
  }
}
