/** One trace from the producer's event to the email: the notifier continues the event's W3C context. */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { jetstream } from "@nats-io/jetstream";
import { Channel } from "@coursemesh/proto/coursemesh/notifier/v1/notifier";
import { publishEvent } from "@coursemesh/shared/events/index";
import { extractTraceContext, startTelemetry } from "@coursemesh/shared/telemetry";
import { startOtlpReceiver, type OtlpReceiver } from "@coursemesh/shared/testing/otlp";
import { testToken, type ServiceProcess } from "@coursemesh/shared/testing/harness";
import { call, createWorld, notifierClient, startNotifier, startSmtp, type NotifierWorld, type TestSmtp } from "./helpers.ts";

let world: NotifierWorld;
let smtp: TestSmtp;
let receiver: OtlpReceiver;
let notifier: ServiceProcess;

beforeAll(async () => {
  // W3C propagation in this process, so the published event carries our trace.
  startTelemetry("notifier-test");
  world = await createWorld();
  smtp = await startSmtp();
  receiver = startOtlpReceiver();
  notifier = await startNotifier(world, smtp, {
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
    OTEL_BSP_SCHEDULE_DELAY: "100",
  });
});

afterAll(async () => {
  await notifier?.stop();
  await receiver?.stop();
  await smtp?.close();
  await world?.cleanup();
});

test("the email's send span is in the trace of the event that caused it", async () => {
  const client = notifierClient(notifier.grpcAddress);
  const job = Bun.randomUUIDv7();
  await call(client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: "ann@example.edu", filter: { target: { $case: "jobId", value: job } } }, await testToken("ann", ["student"], "ann@example.edu"));
  client.close();

  const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
  const producer = extractTraceContext({ traceparent: `00-${traceId}-00f067aa0ba902b7-01` });
  const eventId = Bun.randomUUIDv7();
  const body = JSON.stringify({ eventId, jobId: job, aggregateVersion: 2, courseTitle: "Graph Theory", error: "no text in scan.pdf", attempts: 3 });
  await publishEvent(
    { js: jetstream(world.nats), prefix: world.prefix, service: "ingest" },
    { eventId, subject: `ingest.job.failed.${job}`, type: "coursemesh.events.v1.IngestJobFailed", aggregateId: job, aggregateVersion: 2, body },
    producer,
  );
  await smtp.waitFor(1);
  const spans = await receiver.waitFor((all) => all.some((s) => s.name === "notifier.send" && s.traceId === traceId), 15_000);
  const processed = spans.find((s) => s.name === "notifier.process" && s.traceId === traceId);
  const sent = spans.find((s) => s.name === "notifier.send" && s.traceId === traceId)!;
  expect(processed).toBeDefined();
  expect(sent.service).toBe("notifier");
  expect(sent.attributes["coursemesh.notifier.channel"]).toBe("EMAIL");
  expect(sent.attributes["coursemesh.notifier.event_type"]).toBe("ingest.job.failed");
  // The send hangs under the consumer's processing span, not beside it.
  expect(sent.parentSpanId).toBe(processed!.spanId);
});
