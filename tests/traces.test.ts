/**
 * One trace per user-visible story, across the four real services: a seat change on the demo
 * registrar (scraper check with its browser work → outbox → publish → notifier → fan-out → email),
 * an enrollment (Enroll → the batch that decided it, linked → enrollment.decided → notifier →
 * email) and an upload (UploadDocument → worker steps → ingest.job.completed → notifier). The
 * services export OTLP/HTTP JSON to a receiver in this test; everything else is real: Postgres,
 * NATS JetStream, Chromium, an SMTP server and the demo registrar, all on loopback.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as grpc from "@grpc/grpc-js";
import { CreateCourseRequest, EnrollmentServiceClient, EnrollmentStatus, EnrollRequest } from "@coursemesh/proto/coursemesh/allocator/v1/allocator";
import { IngestServiceClient, JobStatus, type Job, type UploadDocumentResponse } from "@coursemesh/proto/coursemesh/ingest/v1/ingest";
import { Channel, NotificationServiceClient, SubscribeRequest } from "@coursemesh/proto/coursemesh/notifier/v1/notifier";
import { CreateMonitorRequest, FetchMode, MonitorServiceClient } from "@coursemesh/proto/coursemesh/scraper/v1/scraper";
import { unary } from "../services/shared/src/grpc/client.ts";
import {
  createTestDatabase,
  removeNatsPrefix,
  startServiceProcess,
  stopOrKill,
  testNatsPrefix,
  testToken,
  type ServiceProcess,
  type TestDatabase,
} from "../services/shared/src/testing/harness.ts";
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from "../services/shared/src/testing/otlp.ts";
import { coursePdf } from "../services/ingest/test/pdfs.ts";
import { startSmtp, type TestSmtp } from "../services/notifier/test/helpers.ts";
import { startRegistrar, type Registrar } from "../services/scraper/src/demo/registrar.ts";
import { eventually } from "@coursemesh/shared/testing/eventually.ts";

const SERVER = 2;
const CLIENT = 3;
const PRODUCER = 4;
const CONSUMER = 5;

let database: TestDatabase;
let otlp: OtlpReceiver;
let smtp: TestSmtp;
let registrar: Registrar;
const prefix = testNatsPrefix();
const services: Record<string, ServiceProcess> = {};

beforeAll(async () => {
  database = await createTestDatabase();
  otlp = startOtlpReceiver();
  smtp = await startSmtp();
  registrar = startRegistrar({ renderDelayMs: 200 });
  const common = {
    DATABASE_URL: database.url,
    NATS_PREFIX: prefix,
    OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
    OTEL_BSP_SCHEDULE_DELAY: "100",
    // Every trace: the sampler's ratio is the subject of the benchmark, not of this test.
    OTEL_TRACES_SAMPLER: "parentbased_always_on",
    LOG_LEVEL: "info",
  };
  services.notifier = await startServiceProcess("notifier", {
    env: { ...common, NOTIFIER_SMTP_URL: smtp.url, NOTIFIER_PUBLIC_URL: "http://notifier.test", NOTIFIER_POLL_MS: "100", NOTIFIER_COALESCE_SECONDS: "0" },
    timeoutMs: 60_000,
  });
  const [scraper, allocator, ingest] = await Promise.all([
    startServiceProcess("scraper", {
      env: {
        ...common,
        NOTIFIER_ADDR: services.notifier.grpcAddress,
        SCRAPER_ALLOW_PRIVATE_HOSTS: "true",
        SCRAPER_MIN_INTERVAL_SECONDS: "1",
        SCRAPER_CHECK_TIMEOUT_MS: "8000",
        SCRAPER_POLL_MS: "100",
        SCRAPER_SWEEP_INTERVAL_MS: "300",
        SCRAPER_HOST_GAP_MS: "0",
      },
      timeoutMs: 60_000,
    }),
    startServiceProcess("allocator", { env: { ...common, ALLOCATOR_HOLD_MS: "20" }, timeoutMs: 60_000 }),
    startServiceProcess("ingest", {
      env: { ...common, INGEST_DOCUMENTS_MAX_BYTES: String(64 * 1024 * 1024), INGEST_MAX_BYTES: String(8 * 1024 * 1024), INGEST_SWEEP_INTERVAL_MS: "3600000" },
      timeoutMs: 60_000,
    }),
  ]);
  Object.assign(services, { scraper, allocator, ingest });
}, 90_000);

afterAll(async () => {
  // TRACES_DUMP=<file> keeps every span received, to read a failing tree at leisure.
  if (process.env.TRACES_DUMP) await Bun.write(process.env.TRACES_DUMP, JSON.stringify(otlp?.spans() ?? []));
  await Promise.all(Object.values(services).map((service) => stopOrKill(service)));
  await removeNatsPrefix(prefix);
  await registrar?.stop();
  await smtp?.close();
  await otlp?.stop();
  await database?.drop();
}, 60_000);

// ---- reading span trees -----------------------------------------------------------------------

function inTrace(traceId: string): ReceivedSpan[] {
  return otlp.spans().filter((span) => span.traceId === traceId);
}

/** The one span named `name` in `spans` (and matching `where`); fails listing what there is. */
function one(spans: ReceivedSpan[], name: string, where: (span: ReceivedSpan) => boolean = () => true): ReceivedSpan {
  const found = spans.filter((span) => span.name === name && where(span));
  if (found.length === 0) throw new Error(`no ${name} span among: ${spans.map((s) => `${s.service}/${s.name}`).join(", ")}`);
  return found[0]!;
}

/** Whether `descendant` hangs (at any depth) under `ancestor` in its trace. */
function isUnder(descendant: ReceivedSpan, ancestor: ReceivedSpan): boolean {
  const byId = new Map(inTrace(descendant.traceId).map((span) => [span.spanId, span]));
  for (let parent = descendant.parentSpanId; parent; parent = byId.get(parent)?.parentSpanId) {
    if (parent === ancestor.spanId) return true;
  }
  return false;
}

/** The span tree of a trace as indented "service name" lines, for failure messages. */
function drawTree(traceId: string): string {
  const spans = inTrace(traceId);
  const ids = new Set(spans.map((s) => s.spanId));
  const lines: string[] = [];
  const walk = (parent: string | undefined, depth: number) => {
    for (const span of spans.filter((s) => (parent ? s.parentSpanId === parent : !s.parentSpanId || !ids.has(s.parentSpanId)))) {
      lines.push(`${"  ".repeat(depth)}${span.service} ${span.name}`);
      walk(span.spanId, depth + 1);
    }
  };
  walk(undefined, 0);
  return lines.join("\n");
}

function notifierClient(): NotificationServiceClient {
  return new NotificationServiceClient(services.notifier!.grpcAddress, grpc.credentials.createInsecure());
}

// ---- the three stories --------------------------------------------------------------------------

describe("one trace per story", () => {
  test("seat change: scraper check (browser inside) → outbox → publish → notifier process → fan-out → email send; CreateMonitor → Subscribe as client and server spans", async () => {
    const erin = await testToken("erin", ["student"], "erin@example.edu");
    const client = new MonitorServiceClient(services.scraper!.grpcAddress, grpc.credentials.createInsecure());
    try {
      const created = await unary(
        client.createMonitor.bind(client),
        CreateMonitorRequest.fromPartial({
          url: `${registrar.url}/pages/traces`,
          label: "CMPUT 201 LEC A1",
          intervalSeconds: 1,
          notifyEmails: ["erin@example.edu"],
          extractor: { kind: { $case: "beartracks", value: { courseCode: "CMPUT 201", sectionLabel: "LEC A1" } } },
          fetchMode: FetchMode.FETCH_MODE_BROWSER,
        }),
        { token: erin, deadlineMs: 30_000 },
      );
      const monitorId = created.monitor!.id;

      // CreateMonitor's call to the notifier: a client span in the scraper, the server span under it.
      const subscribe = await eventually(
        () => otlp.spans().find((s) => s.service === "notifier" && s.name === "notifier.Subscribe" && s.kind === SERVER),
        15_000,
        "notifier.Subscribe server span",
      );
      // The server span ends (and is exported) after the call it made.
      const createMonitor = await eventually(
        () => inTrace(subscribe.traceId).find((s) => s.name === "scraper.CreateMonitor"),
        10_000,
        "scraper.CreateMonitor in the Subscribe's trace",
      );
      expect(createMonitor).toMatchObject({ service: "scraper", kind: SERVER });
      expect(createMonitor.attributes["coursemesh.scraper.monitor_id"]).toBe(monitorId);
      const subscribeClient = one(inTrace(subscribe.traceId), "scraper.Subscribe", (s) => s.kind === CLIENT);
      expect(subscribeClient.service).toBe("scraper");
      expect(subscribe.parentSpanId).toBe(subscribeClient.spanId);
      expect(isUnder(subscribeClient, createMonitor)).toBe(true);
      expect(subscribe.attributes).toMatchObject({ "rpc.system": "grpc", "rpc.service": "coursemesh.notifier.v1.NotificationService", "rpc.method": "Subscribe" });

      // The first check records the seats; the change after it is the one we follow.
      await eventually(() => otlp.spans().find((s) => s.name === "scraper.check" && s.attributes["coursemesh.scraper.monitor_id"] === monitorId), 20_000, "a first check");
      const mailsBefore = smtp.received.length;
      registrar.setSeats("traces", "CMPUT 201", "LEC A1", { open: 3, capacity: 30, waitlist: 0 });
      await eventually(() => smtp.received.slice(mailsBefore).find((m) => m.to.includes("erin@example.edu") && m.text.includes("3 of 30")), 30_000, "the seat email");

      const send = await eventually(
        () =>
          otlp.spans().find((s) => {
            if (s.service !== "notifier" || s.name !== "notifier.send") return false;
            const spans = inTrace(s.traceId);
            const byId = new Map(spans.map((span) => [span.spanId, span]));
            // The check also reports the monitor's health (its own event and email): wait for the change's send.
            const publish = byId.get(byId.get(s.parentSpanId ?? "")?.parentSpanId ?? "");
            if (!String(publish?.attributes["messaging.destination.name"]).includes(`seats.changed.${monitorId}`)) return false;
            return spans.some((c) => c.name === "scraper.check" && c.attributes["coursemesh.scraper.monitor_id"] === monitorId);
          }),
        15_000,
        "notifier.send in a check's trace",
      );
      const trace = inTrace(send.traceId);
      const tree = drawTree(send.traceId);
      const check = one(trace, "scraper.check");
      expect(check.parentSpanId, tree).toBeUndefined();
      expect(check.attributes).toMatchObject({ "coursemesh.scraper.monitor_id": monitorId, "coursemesh.scraper.changed": true });
      // The browser's work is inside the check.
      const browserRead = one(trace, "scraper.browser_read");
      expect(browserRead.parentSpanId, tree).toBe(check.spanId);
      expect(browserRead.attributes["coursemesh.scraper.monitor_id"]).toBe(monitorId);
      // The check's transaction writes the reading and the event to the outbox; the relay publishes it in the check's trace.
      const outbox = one(trace, "scraper.record_check");
      expect(outbox).toMatchObject({ parentSpanId: check.spanId, kind: CLIENT });
      expect(outbox.attributes).toMatchObject({ "db.system.name": "postgresql" });
      const publish = one(trace, "scraper.publish", (s) => s.kind === PRODUCER && String(s.attributes["messaging.destination.name"]).includes(`seats.changed.${monitorId}`));
      expect(publish.parentSpanId, tree).toBe(outbox.spanId);
      expect(publish.attributes).toMatchObject({ "messaging.system": "nats", "messaging.operation.type": "send" });
      const processed = one(trace, "notifier.process", (s) => s.kind === CONSUMER && s.parentSpanId === publish.spanId);
      expect(processed.attributes).toMatchObject({ "messaging.system": "nats", "messaging.operation.type": "process" });
      const fanout = one(trace, "notifier.fan_out", (s) => s.parentSpanId === processed.spanId);
      expect(fanout.attributes).toMatchObject({ "coursemesh.notifier.event_type": "seats.changed", "coursemesh.notifier.channels": ["EMAIL"] });
      expect(send.parentSpanId, tree).toBe(processed.spanId);
      expect(send.attributes["coursemesh.notifier.channel"]).toBe("EMAIL");
      expect(new Set(trace.map((s) => s.service))).toEqual(new Set(["scraper", "notifier"]));
    } finally {
      client.close();
    }
  }, 90_000);

  test("enrollment: Enroll → the batch transaction that decided it, linked to every request → enrollment.decided → notifier → email", async () => {
    const registrarToken = await testToken("registrar-1", ["registrar"]);
    const client = new EnrollmentServiceClient(services.allocator!.grpcAddress, grpc.credentials.createInsecure());
    const notifier = notifierClient();
    try {
      const { course } = await unary(client.createCourse.bind(client), CreateCourseRequest.fromPartial({ code: "CMPUT 301 LEC T1", title: "Software Engineering", capacity: 3 }), {
        token: registrarToken,
      });
      const students = ["sam", "ria", "lee"];
      for (const student of students) {
        await unary(
          notifier.subscribe.bind(notifier),
          SubscribeRequest.fromPartial({ channel: Channel.CHANNEL_EMAIL, address: `${student}@example.edu`, filter: { target: { $case: "studentId", value: student } } }),
          { token: await testToken(student, ["student"], `${student}@example.edu`) },
        );
      }
      const answers = await Promise.all(
        students.map(async (student) =>
          unary(
            client.enroll.bind(client),
            EnrollRequest.fromPartial({ idempotencyKey: crypto.randomUUID(), studentId: student, courseId: course!.id, wait: true }),
            { token: await testToken(student, ["student"], `${student}@example.edu`), deadlineMs: 20_000 },
          ),
        ),
      );
      for (const answer of answers) expect(answer.status).toBe(EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED);
      await eventually(() => (students.every((s) => smtp.received.some((m) => m.to.includes(`${s}@example.edu`))) ? true : undefined), 30_000, "three enrollment emails");

      const enrolls = await eventually(
        () => {
          const found = otlp.spans().filter((s) => s.service === "allocator" && s.name === "allocator.Enroll" && s.kind === SERVER);
          return found.length >= students.length ? found : undefined;
        },
        10_000,
        "three allocator.Enroll spans",
      );
      for (const enroll of enrolls) expect(enroll.attributes).toMatchObject({ "rpc.system": "grpc", "rpc.method": "Enroll", "coursemesh.allocator.course_id": course!.id });
      // The batch transaction(s) that decided them link back to every Enroll.
      const batches = await eventually(
        () => {
          const found = otlp.spans().filter((s) => s.name === "allocator.allocate_batch" && s.links.some((l) => enrolls.some((e) => e.traceId === l.traceId)));
          const linked = new Set(found.flatMap((b) => b.links.map((l) => l.traceId)));
          return enrolls.every((e) => linked.has(e.traceId)) ? found : undefined;
        },
        10_000,
        "allocate_batch spans linked to every Enroll",
      );
      for (const batch of batches) {
        expect(batch.service).toBe("allocator");
        expect(batch.attributes).toMatchObject({ "db.system.name": "postgresql" });
        const linkedEnroll = enrolls.find((e) => batch.links.some((l) => l.traceId === e.traceId && l.spanId === e.spanId));
        expect(linkedEnroll, "links point at the Enroll server spans").toBeDefined();
      }
      // Each decision travels in the batch's trace: publish → notifier process → email send.
      const batchTrace = batches[0]!.traceId;
      const tree = drawTree(batchTrace);
      const trace = await eventually(
        () => {
          const spans = inTrace(batchTrace);
          return spans.some((s) => s.name === "notifier.send") ? spans : undefined;
        },
        10_000,
        "notifier.send in the batch's trace",
      );
      const publish = one(trace, "allocator.publish", (s) => s.kind === PRODUCER && String(s.attributes["messaging.destination.name"] ?? "").includes("enrollment.decided"));
      const processed = one(trace, "notifier.process", (s) => s.parentSpanId === publish.spanId);
      one(trace, "notifier.fan_out", (s) => s.parentSpanId === processed.spanId);
      const send = one(trace, "notifier.send", (s) => s.parentSpanId === processed.spanId);
      expect(send.attributes["coursemesh.notifier.event_type"], tree).toBe("enrollment.decided");
      expect(new Set(trace.map((s) => s.service))).toEqual(new Set(["allocator", "notifier"]));
    } finally {
      client.close();
      notifier.close();
    }
  }, 60_000);

  test("upload: UploadDocument → worker steps → ingest.job.completed → notifier", async () => {
    const token = await testToken("registrar-2", ["registrar"]);
    const client = new IngestServiceClient(services.ingest!.grpcAddress, grpc.credentials.createInsecure());
    try {
      const { bytes } = await coursePdf();
      const metadata = new grpc.Metadata();
      metadata.set("authorization", `Bearer ${token}`);
      const job = await new Promise<Job>((resolve, reject) => {
        const call = client.uploadDocument(metadata, (error: grpc.ServiceError | null, response?: UploadDocumentResponse) => (error ? reject(error) : resolve(response!.job!)));
        call.write({ chunk: { $case: "job", value: { courseTitle: "Graph Theory", idempotencyKey: "traces-upload-1" } } });
        call.write({ chunk: { $case: "file", value: { filename: "graphs.pdf", contentType: "application/pdf" } } });
        call.write({ chunk: { $case: "data", value: Buffer.from(bytes) } });
        call.end();
      });
      expect(job.status).not.toBe(JobStatus.JOB_STATUS_FAILED);

      const upload = await eventually(
        () => otlp.spans().find((s) => s.service === "ingest" && s.name === "ingest.UploadDocument" && s.kind === SERVER),
        10_000,
        "ingest.UploadDocument",
      );
      const trace = await eventually(
        () => {
          const spans = inTrace(upload.traceId);
          return spans.some((s) => s.service === "notifier" && s.name === "notifier.process") ? spans : undefined;
        },
        30_000,
        "notifier.process in the upload's trace",
      );
      const tree = drawTree(upload.traceId);
      expect(upload.parentSpanId, tree).toBeUndefined();
      const extract = one(trace, "ingest.extract");
      const saved = one(trace, "ingest.save_outline");
      expect(extract.attributes["coursemesh.ingest.job_id"], tree).toBe(job.id);
      expect(saved.attributes["coursemesh.ingest.job_id"]).toBe(job.id);
      const completed = one(trace, "ingest.publish", (s) => s.kind === PRODUCER && String(s.attributes["messaging.destination.name"] ?? "").includes("ingest.job.completed"));
      const processed = one(trace, "notifier.process", (s) => s.parentSpanId === completed.spanId);
      expect(processed.attributes).toMatchObject({ "messaging.system": "nats", "coursemesh.event.outcome": "applied" });
      // The worker's steps: the WORK message's process span under the job's creation, the steps under it.
      const work = one(trace, "ingest.process", (s) => s.kind === CONSUMER);
      expect(isUnder(work, upload), tree).toBe(true);
      expect(isUnder(extract, work) && isUnder(saved, work), tree).toBe(true);
      expect(isUnder(completed, saved), tree).toBe(true);
      expect(new Set(trace.map((s) => s.service))).toEqual(new Set(["ingest", "notifier"]));
    } finally {
      client.close();
    }
  }, 60_000);
});

describe("metrics", () => {
  test("every /metrics has the gRPC, outbox and consumer series, and each service its own", async () => {
    const wanted: Record<string, string[]> = {
      scraper: ["coursemesh_scraper_browser_contexts", 'coursemesh_scraper_monitors{mode="ACTIVE",health="HEALTHY",service="scraper"} 1'],
      allocator: ["coursemesh_queue_depth"],
      notifier: [
        'notifier_notifications_total{channel="EMAIL",status="SENT",service="notifier"}',
        `coursemesh_consumer_pending{consumer="${prefix}_notifier-seats",state="undelivered",service="notifier"} 0`,
        `coursemesh_consumer_redelivered{consumer="${prefix}_notifier-enrollment",service="notifier"} 0`,
      ],
      ingest: ["ingest_jobs_live", 'coursemesh_ingest_jobs{status="COMPLETED",service="ingest"} 1', `coursemesh_consumer_pending{consumer="${prefix}_ingest-workers",state="unacked",service="ingest"} 0`],
    };
    const missing: string[] = [];
    for (const [service, series] of Object.entries(wanted)) {
      const text = await (await fetch(`${services[service]!.httpUrl}/metrics`)).text();
      const everywhere = ["grpc_server_handled_total", "grpc_server_handling_seconds_bucket", `coursemesh_outbox_backlog{service="${service}"} 0`, `coursemesh_outbox_relay_lag_seconds{service="${service}"} 0`];
      for (const line of [...everywhere, ...series]) if (!text.includes(line)) missing.push(`${service}: ${line}`);
    }
    expect(missing).toEqual([]);
  });
});

describe("sampling", () => {
  test("OTEL_TRACES_SAMPLER_ARG alone sets the ratio, and a caller's sampled trace is followed whatever the ratio", async () => {
    // No OTEL_TRACES_SAMPLER: the default parent-based ratio sampler, here at 0.
    const allocator = await startServiceProcess("allocator", {
      env: { DATABASE_URL: database.url, NATS_PREFIX: prefix, OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url, OTEL_EXPORTER_OTLP_PROTOCOL: "http/json", OTEL_BSP_SCHEDULE_DELAY: "100", OTEL_TRACES_SAMPLER_ARG: "0", LOG_LEVEL: "info" },
      timeoutMs: 60_000,
    });
    const client = new EnrollmentServiceClient(allocator.grpcAddress, grpc.credentials.createInsecure());
    try {
      const token = await testToken("sam", ["student"], "sam@example.edu");
      const enroll = (courseId: string, traceparent?: string) =>
        new Promise<void>((resolve) => {
          const metadata = new grpc.Metadata();
          metadata.set("authorization", `Bearer ${token}`);
          if (traceparent) metadata.set("traceparent", traceparent);
          client.enroll(EnrollRequest.fromPartial({ idempotencyKey: crypto.randomUUID(), studentId: "sam", courseId }), metadata, () => resolve());
        });
      const unsampled = crypto.randomUUID();
      const followed = crypto.randomUUID();
      const callerTrace = crypto.randomUUID().replaceAll("-", "");
      await enroll(unsampled);
      await enroll(followed, `00-${callerTrace}-00f067aa0ba902b7-01`);
      const span = await eventually(() => otlp.spans().find((s) => s.attributes["coursemesh.allocator.course_id"] === followed), 10_000, "the followed call's span");
      expect(span.traceId).toBe(callerTrace);
      expect(span.parentSpanId).toBe("00f067aa0ba902b7");
      await Bun.sleep(500);
      expect(otlp.spans().filter((s) => s.attributes["coursemesh.allocator.course_id"] === unsampled)).toEqual([]);
    } finally {
      client.close();
      await allocator.stop();
    }
  });
});

describe("span conventions", () => {
  test("every span is named <service>.<operation> by the service that made it; failed spans carry an error status", async () => {
    // A call that fails: its server span says so, with the ErrorInfo reason as error.type.
    const client = new EnrollmentServiceClient(services.allocator!.grpcAddress, grpc.credentials.createInsecure());
    const missing = crypto.randomUUID();
    await unary(client.enroll.bind(client), EnrollRequest.fromPartial({ idempotencyKey: crypto.randomUUID(), studentId: "sam", courseId: missing }), {
      token: await testToken("sam", ["student"], "sam@example.edu"),
    }).catch(() => {});
    client.close();
    const failed = await eventually(
      () => otlp.spans().find((s) => s.name === "allocator.Enroll" && s.attributes["coursemesh.allocator.course_id"] === missing),
      10_000,
      "the failed Enroll's span",
    );
    expect(failed.status?.code).toBe(2);
    expect(failed.attributes).toMatchObject({ "rpc.grpc.status_code": 5, "error.type": "COURSE_NOT_FOUND" });
    const spans = otlp.spans();
    expect(spans.length).toBeGreaterThan(0);
    const misnamed = spans.filter((s) => !s.name.startsWith(`${s.service}.`)).map((s) => `${s.service}/${s.name}`);
    expect([...new Set(misnamed)]).toEqual([]);
    for (const span of spans.filter((s) => s.kind === SERVER && s.attributes["rpc.system"] === "grpc")) {
      const code = Number(span.attributes["rpc.grpc.status_code"] ?? 0);
      if (code !== 0) expect(span.status?.code).toBe(2);
    }
  });
});
