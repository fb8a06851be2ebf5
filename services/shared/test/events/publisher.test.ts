/** The relay's publisher: the same messages as publishEvent, acks matched to their publishes, failures reported. */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { ROOT_CONTEXT } from "@opentelemetry/api";
import { connect } from "@nats-io/transport-node";
import { createEventPublisher, EventHeader, streamName, type WireEvent } from "../../src/events/index.ts";
import { TEST_NATS_URL } from "../../src/testing/harness.ts";
import { readStream, setupEventsTest, type EventsTestEnv } from "./support.ts";

const TYPE = "coursemesh.events.v1.SeatsChanged";
let env: EventsTestEnv;

beforeAll(async () => {
  env = await setupEventsTest("publisher_test", ["SEATS"]);
});

afterAll(async () => {
  await env.cleanup();
});

function event(aggregate: string, version: number): WireEvent {
  return { eventId: Bun.randomUUIDv7(), subject: `seats.changed.${aggregate}`, type: TYPE, aggregateId: aggregate, aggregateVersion: version, body: JSON.stringify({ version }) };
}

test("each publish resolves with its own ack, in order, and a repeated event id is a duplicate", async () => {
  const publisher = createEventPublisher(env.nc, { prefix: env.prefix, service: "test", timeoutMs: 5000 });
  const events = Array.from({ length: 200 }, (_, i) => event("m-order", i + 1));
  const acks = await Promise.all(events.map((e) => publisher.publish(e, ROOT_CONTEXT)));
  expect(acks.map((ack) => ack.stream)).toEqual(events.map(() => streamName(env.prefix, "SEATS")));
  expect(acks.map((ack) => ack.seq)).toEqual(acks.map((_, i) => acks[0]!.seq + i));
  expect(acks.every((ack) => !ack.duplicate)).toBe(true);

  const again = await publisher.publish(events[7]!, ROOT_CONTEXT);
  expect(again).toEqual({ stream: streamName(env.prefix, "SEATS"), seq: acks[7]!.seq, duplicate: true });
  publisher.close();

  const stored = await readStream(env, "SEATS", 200);
  expect(stored.map((m) => m.headers?.get(EventHeader.MsgId))).toEqual(events.map((e) => e.eventId));
  expect(stored.map((m) => m.headers?.get(EventHeader.AggregateVersion))).toEqual(events.map((e) => String(e.aggregateVersion)));
  expect(stored[0]!.headers?.get(EventHeader.Event)).toBe(TYPE);
  expect(stored[0]!.string()).toBe(JSON.stringify({ version: 1 }));
});

test("a subject no stream stores fails its publish; a closed connection fails what waits", async () => {
  const nc = await connect({ servers: TEST_NATS_URL });
  const publisher = createEventPublisher(nc, { prefix: `${env.prefix}-nowhere`, service: "test", timeoutMs: 5000 });
  await expect(publisher.publish(event("m-lost", 1), ROOT_CONTEXT)).rejects.toThrow();

  const waiting = publisher.publish(event("m-lost", 2), ROOT_CONTEXT);
  await nc.close();
  await expect(waiting).rejects.toThrow();
  await expect(publisher.publish(event("m-lost", 3), ROOT_CONTEXT)).rejects.toThrow();
});
