/**
 * Notifier benchmark (issue 5). Prints one JSON object:
 * - throughput: EnrollmentDecided events published to JetStream as fast as possible → emails
 *   accepted by a local SMTP server (smtp-server, in this process) per second, through the real
 *   notifier process (consumer → deliveries → sender loop with pooled SMTP);
 * - latency: event published → email accepted, p50/p99, with 200 events/s offered;
 * - the baseline, measured in the same run: the design the user started from — a consumer that
 *   looks up the recipients, renders the same email and sends it inline with a fresh SMTP connection
 *   per email before acking, one event at a time — and the ratio. (smtp-server holds each new
 *   connection's greeting for 100 ms to catch early talkers, as real servers do, so a connection per
 *   email costs at least that.)
 * Uses a fresh database and NATS prefixes on loopback and removes them. The machine's 1-minute load
 * average before and after is printed too: the machine is shared, so read a run against its load.
 * Run: bun run bench/notifier.ts
 */
import { loadavg } from "node:os";
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { ROOT_CONTEXT } from "@opentelemetry/api";
import nodemailer from "nodemailer";
import postgres from "postgres";
import { EnrollmentDecided, EnrollmentStatus } from "../proto/gen/coursemesh/events/v1/events.ts";
import { Channel, SubscribeRequest } from "../proto/gen/coursemesh/notifier/v1/notifier.ts";
import { renderEventMessage } from "../services/notifier/src/messages.ts";
import { notifierClient, startSmtp, type TestSmtp } from "../services/notifier/test/helpers.ts";
import { unary } from "../services/shared/src/grpc/client.ts";
import { deleteStreams, provisionStreams, publishEvent, streamName, prefixedSubject } from "../services/shared/src/events/index.ts";
import { createTestDatabase, startServiceProcess, TEST_NATS_URL, testNatsPrefix, testToken } from "../services/shared/src/testing/harness.ts";
import { percentile, round } from "./stats.ts";

const TARGETS = { emails_per_s: 1000, ratio_to_baseline: 5, p99_ms_at_200_per_s: 250 };
const STUDENTS = 2000;
const COURSES = 50;
const THROUGHPUT_EVENTS = 6000;
const PUBLISH_WINDOW = 256;
const LATENCY_RATE = 200;
const LATENCY_SECONDS = 10;
const BASELINE_MAX_EVENTS = 400;
const BASELINE_MAX_MS = 10_000;

const studentId = (n: number) => `student-${String(n % STUDENTS).padStart(5, "0")}`;
const emailOf = (student: string) => `${student}@example.edu`;
const courseId = (n: number) => `0190a1b2-c3d4-7e5f-8a9b-${String(n % COURSES).padStart(12, "0")}`;

function decided(n: number, student: string) {
  const course = courseId(n);
  const eventId = Bun.randomUUIDv7();
  const payload = EnrollmentDecided.toJSON(
    EnrollmentDecided.fromPartial({
      eventId,
      occurredAt: new Date(),
      courseId: course,
      aggregateVersion: n + 1,
      courseCode: `CMPUT ${200 + (n % COURSES)} LEC A1`,
      courseTitle: "Practical Programming Methodology",
      requestId: Bun.randomUUIDv7(),
      studentId: student,
      status: n % 3 === 0 ? EnrollmentStatus.ENROLLMENT_STATUS_WAITLISTED : EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED,
      waitlistPosition: n % 3 === 0 ? 1 + (n % 17) : undefined,
      seatsTaken: 30,
      capacity: 30,
    }),
  );
  return {
    eventId,
    subject: `enrollment.decided.${course}`,
    type: "coursemesh.events.v1.EnrollmentDecided",
    aggregateId: course,
    aggregateVersion: n + 1,
    body: JSON.stringify(payload),
  };
}

const loadBefore = loadavg()[0]!;
const db = await createTestDatabase();
const prefix = testNatsPrefix();
const baselinePrefix = testNatsPrefix();
const nc = await connect({ servers: TEST_NATS_URL });
const jsm = await jetstreamManager(nc);
const js = jetstream(nc);
const smallStreams = { limits: Object.fromEntries(["SEATS", "ENROLLMENT", "INGEST", "DLQ"].map((s) => [s, { maxBytes: 256 * 1024 * 1024 }])) };
let smtp: TestSmtp | undefined;
let notifier: Awaited<ReturnType<typeof startServiceProcess>> | undefined;

try {
  smtp = await startSmtp({ parse: false });
  await provisionStreams(jsm, prefix, ["SEATS", "ENROLLMENT", "INGEST", "DLQ"], smallStreams);
  notifier = await startServiceProcess("notifier", {
    env: {
      DATABASE_URL: db.url,
      NATS_PREFIX: prefix,
      NOTIFIER_SMTP_URL: smtp.url,
      NOTIFIER_EMAIL_RATE_PER_HOUR: "1000000",
      LOG_LEVEL: "info",
    },
  });
  const client = notifierClient(notifier.grpcAddress);
  const service = await testToken("bench", ["service"]);

  // Every student subscribes to their own enrollment outcomes (their own address: active at once).
  for (let start = 0; start < STUDENTS; start += 25) {
    await Promise.all(
      Array.from({ length: Math.min(25, STUDENTS - start) }, (_, i) => {
        const student = studentId(start + i);
        const request = SubscribeRequest.fromPartial({
          channel: Channel.CHANNEL_EMAIL,
          address: emailOf(student),
          filter: { target: { $case: "studentId", value: student } },
          owner: student,
          ownerEmail: emailOf(student),
        });
        return unary(client.subscribe.bind(client), request, { token: service });
      }),
    );
  }
  client.close();

  // Throughput: publish as fast as JetStream takes them, count accepted emails.
  const received0 = smtp.received.length;
  const t0 = performance.now();
  const pending = new Set<Promise<unknown>>();
  for (let n = 0; n < THROUGHPUT_EVENTS; n++) {
    const p = publishEvent({ js, prefix, service: "bench" }, decided(n, studentId(n)), ROOT_CONTEXT).finally(() => pending.delete(p));
    pending.add(p);
    if (pending.size >= PUBLISH_WINDOW) await Promise.race(pending);
  }
  await Promise.all(pending);
  await smtp.waitFor(received0 + THROUGHPUT_EVENTS, 180_000);
  const throughputMs = performance.now() - t0;
  const emailsPerS = THROUGHPUT_EVENTS / (throughputMs / 1000);

  // Latency at a steady 200 events/s, each to a different student so an email names its event.
  await Bun.sleep(1000);
  const sentAt = new Map<string, number>();
  const latencyStart = smtp.received.length;
  const total = LATENCY_RATE * LATENCY_SECONDS;
  const begin = performance.now();
  for (let n = 0; n < total; n++) {
    const due = begin + (n * 1000) / LATENCY_RATE;
    const wait = due - performance.now();
    if (wait > 0) await Bun.sleep(wait);
    const student = studentId(n);
    sentAt.set(emailOf(student), Date.now());
    await publishEvent({ js, prefix, service: "bench" }, decided(THROUGHPUT_EVENTS + n, student), ROOT_CONTEXT);
  }
  await smtp.waitFor(latencyStart + total, 60_000);
  const latencies = smtp.received
    .slice(latencyStart)
    .map((m) => m.acceptedAt - (sentAt.get(m.to[0]!) ?? m.acceptedAt))
    .sort((a, b) => a - b);
  await notifier.stop();
  notifier = undefined;

  // Baseline: inline sends with a fresh SMTP connection per email, one event at a time, acked after.
  await provisionStreams(jsm, baselinePrefix, ["ENROLLMENT"], smallStreams);
  const sql = postgres(db.url, { max: 2, onnotice: () => {}, connection: { search_path: "notifier" } });
  const fresh = nodemailer.createTransport({ url: smtp.url });
  for (let n = 0; n < BASELINE_MAX_EVENTS; n++) {
    await publishEvent({ js, prefix: baselinePrefix, service: "bench" }, decided(n, studentId(n)), ROOT_CONTEXT);
  }
  const durable = "baseline";
  await jsm.consumers.add(streamName(baselinePrefix, "ENROLLMENT"), {
    durable_name: durable,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    filter_subject: prefixedSubject(baselinePrefix, "enrollment.>"),
  });
  const consumer = await js.consumers.get(streamName(baselinePrefix, "ENROLLMENT"), durable);
  let baselineEmails = 0;
  const b0 = performance.now();
  const messages = await consumer.consume({ max_messages: 1 });
  for await (const msg of messages) {
    const event = msg.json<Record<string, unknown>>();
    const recipients = await sql`select address from subscriptions where status = 'ACTIVE' and filter_kind = 'student' and filter_value = ${event.studentId as string}`;
    for (const { address } of recipients) {
      const message = renderEventMessage("enrollment.decided", { event, perspective: "student" });
      await fresh.sendMail({ from: "coursemesh <notifications@coursemesh.localhost>", to: address, ...message });
      baselineEmails++;
    }
    msg.ack();
    if (msg.info.pending === 0 || performance.now() - b0 > BASELINE_MAX_MS) break;
  }
  const baselineMs = performance.now() - b0;
  messages.stop();
  fresh.close();
  await sql.end();
  const baselinePerS = baselineEmails / (baselineMs / 1000);

  const p99 = percentile(latencies, 99);
  const ratio = emailsPerS / baselinePerS;
  console.log(
    JSON.stringify({
      benchmark: "notifier",
      throughput: { events: THROUGHPUT_EVENTS, emails: THROUGHPUT_EVENTS, seconds: round(throughputMs / 1000, 2), emails_per_s: round(emailsPerS) },
      latency: {
        offered_events_per_s: LATENCY_RATE,
        events: total,
        p50_ms: round(percentile(latencies, 50)),
        p99_ms: round(p99),
        max_ms: round(latencies[latencies.length - 1] ?? NaN),
      },
      baseline: { design: "fresh SMTP connection per email, sent inline before the ack, one event at a time", emails: baselineEmails, emails_per_s: round(baselinePerS) },
      ratio_to_baseline: round(ratio, 2),
      load_average_1m: { before: round(loadBefore, 2), after: round(loadavg()[0]!, 2), cores: navigator.hardwareConcurrency },
      targets: TARGETS,
      pass: {
        emails_per_s: emailsPerS >= TARGETS.emails_per_s,
        ratio_to_baseline: ratio >= TARGETS.ratio_to_baseline,
        p99_ms_at_200_per_s: p99 <= TARGETS.p99_ms_at_200_per_s,
      },
    }),
  );
} finally {
  await notifier?.stop();
  await smtp?.close();
  await deleteStreams(jsm, prefix);
  await deleteStreams(jsm, baselinePrefix);
  await nc.close();
  await db.drop();
}
