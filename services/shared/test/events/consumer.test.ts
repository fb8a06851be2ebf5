import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { ROOT_CONTEXT } from "@opentelemetry/api";
import {
  consumerName,
  eventHeaders,
  PoisonEventError,
  startConsumer,
  streamName,
  type ConsumedEvent,
  type ConsumerOptions,
  type RunningConsumer,
} from "../../src/events/index.ts";
import { readStream, setupEventsTest, waitUntil, type EventsTestEnv } from "./support.ts";

// Real Postgres, NATS and child processes on a shared machine: more than bun's 5 s default when run bare.
setDefaultTimeout(30_000);

const TYPE = "coursemesh.events.v1.SeatsChanged";
let env: EventsTestEnv;
const running: RunningConsumer[] = [];

beforeAll(async () => {
  env = await setupEventsTest("consumertest", ["SEATS", "DLQ"]);
});

afterAll(async () => {
  for (const consumer of running) await consumer.stop();
  await env.cleanup();
});

/** Publishes an event as the relay would, with a chosen Nats-Msg-Id (so a test can slip a repeat past JetStream). */
async function publish(aggregate: string, version: number | null, payload: Record<string, unknown> = {}, ids: { eventId?: string; msgId?: string } = {}) {
  const eventId = ids.eventId ?? Bun.randomUUIDv7();
  const event = { eventId, subject: `seats.changed.${aggregate}`, type: TYPE, aggregateId: aggregate, aggregateVersion: version, body: "" };
  const h = eventHeaders(event, ROOT_CONTEXT);
  const body = JSON.stringify({ eventId, monitorId: aggregate, aggregateVersion: version, ...payload });
  await env.js.publish(`${env.prefix}.seats.changed.${aggregate}`, body, { msgID: ids.msgId ?? eventId, headers: h });
  return eventId;
}

async function consume(
  durable: string,
  aggregate: string,
  handler: ConsumerOptions<Record<string, unknown>>["handler"],
  options: Partial<ConsumerOptions<Record<string, unknown>>> = {},
): Promise<RunningConsumer> {
  const consumer = await startConsumer({
    sql: env.sql,
    nats: env.nc,
    service: "consumertest",
    prefix: env.prefix,
    logger: env.logger,
    stream: "SEATS",
    durable,
    filterSubjects: [`seats.changed.${aggregate}`],
    handler,
    backoffMs: [50],
    ...options,
  });
  running.push(consumer);
  return consumer;
}

async function settled(durable: string) {
  return waitUntil(
    () => env.jsm.consumers.info(streamName(env.prefix, "SEATS"), consumerName(env.prefix, durable)),
    (info) => info.num_pending === 0 && info.num_ack_pending === 0,
    10_000,
    `${durable} to ack everything`,
  );
}

test("an event older than the aggregate version already applied is acked and skipped", async () => {
  const applied: number[] = [];
  for (const version of [1, 3, 2, 3, 4]) await publish("agg-stale", version);
  const consumer = await consume("stale", "agg-stale", async (_tx, event) => {
    applied.push(event.aggregateVersion!);
  });
  await settled("stale");
  expect(applied).toEqual([1, 3, 4]);
  expect(consumer.stats()).toMatchObject({ applied: 3, stale: 2, duplicate: 0 });
  const [row] = await env.sql`select version::int from consumer_aggregate_versions where consumer = 'stale' and aggregate_id = 'agg-stale'`;
  expect(row!.version).toBe(4);
});

test("a repeat of an event id that JetStream let through (a new Nats-Msg-Id) has no effect", async () => {
  const calls: string[] = [];
  const eventId = await publish("agg-dup", null, {}, { msgId: "first-copy" });
  await publish("agg-dup", null, {}, { eventId, msgId: "second-copy" });
  const consumer = await consume("dedupe", "agg-dup", async (tx, event) => {
    calls.push(event.eventId);
    await tx`select 1`;
  });
  await settled("dedupe");
  expect(calls).toEqual([eventId]);
  expect(consumer.stats()).toMatchObject({ applied: 1, duplicate: 1 });
  const rows = await env.sql`select event_id::text from consumed_events where consumer = 'dedupe'`;
  expect(rows.map((r) => r.event_id)).toEqual([eventId]);
});

test("a handler's failure rolls back its writes, and the event is redelivered after the backoff", async () => {
  await env.sql`create table if not exists seen (event_id uuid, attempt int)`;
  let attempts = 0;
  const eventId = await publish("agg-retry", 1);
  const consumer = await consume("retry", "agg-retry", async (tx, event) => {
    attempts++;
    await tx`insert into seen (event_id, attempt) values (${event.eventId}, ${event.deliveryCount})`;
    if (event.deliveryCount < 3) throw new Error("the SMTP server said try later");
  });
  await settled("retry");
  expect(attempts).toBe(3);
  expect([...(await env.sql`select attempt from seen where event_id = ${eventId}`)]).toEqual([{ attempt: 3 }]);
  expect(consumer.stats()).toMatchObject({ applied: 1, retried: 2 });
});

test("a poison message lands on the DLQ with its error after the configured attempts; later events still flow", async () => {
  const attemptsByEvent = new Map<string, number>();
  // No versions: a later version applied meanwhile would make the failing event stale (and skipped).
  const poisonId = await publish("agg-poison", null, { poison: true });
  const healthyId = await publish("agg-poison", null);
  const consumer = await consume(
    "poison",
    "agg-poison",
    async (_tx, event: ConsumedEvent<Record<string, unknown>>) => {
      attemptsByEvent.set(event.eventId, (attemptsByEvent.get(event.eventId) ?? 0) + 1);
      if (event.payload.poison) throw new Error("seat text 'abc' is not a number");
    },
    { maxDeliver: 3 },
  );
  await settled("poison");
  expect(attemptsByEvent.get(poisonId)).toBe(3);
  expect(attemptsByEvent.get(healthyId)).toBe(1);
  expect(consumer.stats()).toMatchObject({ "dead-lettered": 1, applied: 1 });

  const [dead] = await readStream(env, "DLQ");
  expect(dead!.subject).toBe(`${env.prefix}.dlq.consumertest.poison`);
  expect(dead!.headers!.get("Coursemesh-Error")).toBe("seat text 'abc' is not a number");
  expect(dead!.headers!.get("Coursemesh-Dead-Letter-Reason")).toBe("attempts");
  expect(dead!.headers!.get("Coursemesh-Deliveries")).toBe("3");
  expect(dead!.headers!.get("Coursemesh-Event")).toBe(TYPE);
  expect(dead!.headers!.get("Coursemesh-Original-Subject")).toBe(`${env.prefix}.seats.changed.agg-poison`);
  expect(dead!.json<Record<string, unknown>>()).toMatchObject({ eventId: poisonId, poison: true });
});

test("PoisonEventError and a body that is not JSON go to the DLQ on the first delivery", async () => {
  let calls = 0;
  await publish("agg-bad", 1, { reject: true });
  const h = eventHeaders({ eventId: Bun.randomUUIDv7(), subject: "seats.changed.agg-bad", type: TYPE, body: "" }, ROOT_CONTEXT);
  const garbledId = Bun.randomUUIDv7();
  await env.js.publish(`${env.prefix}.seats.changed.agg-bad`, "{not json", { msgID: garbledId, headers: h });
  const consumer = await consume(
    "bad",
    "agg-bad",
    async (_tx, event) => {
      calls++;
      if (event.payload.reject) throw new PoisonEventError("monitor m1 does not exist");
    },
    { maxDeliver: 5 },
  );
  await settled("bad");
  expect(calls).toBe(1);
  expect(consumer.stats()).toMatchObject({ "dead-lettered": 2 });
  const dead = (await readStream(env, "DLQ")).filter((m) => m.subject.endsWith(".bad"));
  expect(dead.map((m) => m.headers!.get("Coursemesh-Dead-Letter-Reason"))).toEqual(["poison", "poison"]);
  expect(dead.map((m) => m.headers!.get("Coursemesh-Deliveries"))).toEqual(["1", "1"]);
  const errors = dead.map((m) => m.headers!.get("Coursemesh-Error"));
  expect(errors).toContain("monitor m1 does not exist");
  expect(errors.find((e) => e.includes("is not JSON"))).toBeTruthy();
});

test("a handler longer than the ack wait keeps its message (working), and stop() lets it finish", async () => {
  let calls = 0;
  let finished = 0;
  await publish("agg-slow", 1);
  const consumer = await consume(
    "slow",
    "agg-slow",
    async () => {
      calls++;
      await Bun.sleep(1500);
      finished++;
    },
    { ackWaitMs: 600 },
  );
  await waitUntil(() => calls, (n) => n === 1, 5000, "the handler to start");
  await consumer.stop();
  running.splice(running.indexOf(consumer), 1);
  expect(finished).toBe(1);
  expect(calls).toBe(1);
  const info = await settled("slow");
  expect(info.num_redelivered).toBe(0);
});

test("a deleted durable consumer is recreated by the loop, and the stream replayed into it has no effect", async () => {
  const applied: string[] = [];
  const first = await publish("agg-replay", 1);
  const second = await publish("agg-replay", 2);
  const consumer = await consume("replay", "agg-replay", async (_tx, event) => {
    applied.push(event.eventId);
  });
  await settled("replay");
  expect(applied).toEqual([first, second]);

  await env.jsm.consumers.delete(streamName(env.prefix, "SEATS"), consumerName(env.prefix, "replay"));
  // The recreated consumer starts from the stream's beginning: both events again, both no-ops.
  await waitUntil(() => consumer.stats().duplicate, (n) => n === 2, 15_000, "the replayed events to be recognised");
  const third = await publish("agg-replay", 3);
  await waitUntil(() => applied.length, (n) => n === 3, 5000, "the next event");
  expect(applied).toEqual([first, second, third]);
});
