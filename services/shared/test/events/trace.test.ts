/**
 * One trace runs from the transaction that wrote an event, through the relay's publish (another
 * process), to the consumer's handling (a third process), carried in the outbox row and the
 * message's headers.
 */
import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { context, ROOT_CONTEXT, trace, TraceFlags } from "@opentelemetry/api";
import { enqueue } from "../../src/events/index.ts";
import { startTelemetry } from "../../src/telemetry.ts";
import { TEST_NATS_URL } from "../../src/testing/harness.ts";
import { startOtlpReceiver, type OtlpReceiver } from "../../src/testing/otlp.ts";
import { setupEventsTest, spawnFixture, waitUntil, type EventsTestEnv, type Fixture } from "./support.ts";

// Real Postgres, NATS and child processes on a shared machine: more than bun's 5 s default when run bare.
setDefaultTimeout(30_000);

const PRODUCER = 4;
const CONSUMER = 5;
let env: EventsTestEnv;
let receiver: OtlpReceiver;
const fixtures: Fixture[] = [];

beforeAll(async () => {
  startTelemetry("tracetest");
  env = await setupEventsTest("tracing", ["SEATS", "DLQ"]);
  await env.sql`create table applied (event_id uuid not null, aggregate_id text, version bigint, pid int)`;
  receiver = startOtlpReceiver();
});

afterAll(async () => {
  for (const fixture of fixtures) await fixture.kill().catch(() => {});
  await receiver?.stop();
  await env?.cleanup();
});

test("the consumer's span continues the trace of the publish, which continues the writer's", async () => {
  const common = {
    DATABASE_URL: env.db.url,
    SCHEMA: env.schema,
    NATS_URL: TEST_NATS_URL,
    NATS_PREFIX: env.prefix,
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
    OTEL_BSP_SCHEDULE_DELAY: "100",
  };
  const consumer = spawnFixture("consumer-process.ts", { ...common, SERVICE: "tracedconsumer", DURABLE: "traced" });
  const relay = spawnFixture("relay-process.ts", { ...common, SERVICE: "tracedrelay" });
  fixtures.push(consumer, relay);
  await Promise.all([consumer.waitForLine((l) => l.ready === true), relay.waitForLine((l) => l.msg === "outbox relay leading")]);

  const traceId = randomBytes(16).toString("hex");
  const writerSpanId = randomBytes(8).toString("hex");
  const writer = trace.setSpanContext(ROOT_CONTEXT, { traceId, spanId: writerSpanId, traceFlags: TraceFlags.SAMPLED, isRemote: true });
  const eventId = await context.with(writer, () =>
    env.sql.begin((tx) =>
      enqueue(tx, { subject: "seats.changed.m-traced", type: "coursemesh.events.v1.SeatsChanged", aggregateId: "m-traced", aggregateVersion: 1, payload: { monitorId: "m-traced" } }),
    ),
  );
  await waitUntil(async () => (await env.sql`select count(*)::int as n from applied where event_id = ${eventId}`)[0]!.n, (n) => n === 1, 10_000, "the consumer to apply the event");

  const spans = await receiver.waitFor(
    (all) => all.some((s) => s.traceId === traceId && s.kind === PRODUCER) && all.some((s) => s.traceId === traceId && s.kind === CONSUMER),
    15_000,
  );
  const publish = spans.find((s) => s.traceId === traceId && s.kind === PRODUCER)!;
  const processing = spans.find((s) => s.traceId === traceId && s.kind === CONSUMER)!;
  expect(publish).toMatchObject({ service: "tracedrelay", name: "tracedrelay.publish", parentSpanId: writerSpanId });
  expect(publish.attributes).toMatchObject({
    "messaging.system": "nats",
    "messaging.operation.type": "send",
    "messaging.destination.name": `${env.prefix}.seats.changed.m-traced`,
    "messaging.message.id": eventId,
    "coursemesh.event.type": "coursemesh.events.v1.SeatsChanged",
  });
  expect(processing).toMatchObject({ service: "tracedconsumer", name: "tracedconsumer.process", parentSpanId: publish.spanId });
  expect(processing.attributes).toMatchObject({
    "messaging.system": "nats",
    "messaging.operation.type": "process",
    "messaging.consumer.group.name": `${env.prefix}_traced`,
    "messaging.message.id": eventId,
    "coursemesh.event.outcome": "applied",
  });
});
