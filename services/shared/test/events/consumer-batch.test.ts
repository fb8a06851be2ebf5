/**
 * Batch mode of the consumer loop: several events per transaction, with the same promises as one
 * at a time — repeats and stale versions have no effect, a poison event is isolated (the rest of
 * its batch commits), and one aggregate's events are applied in order even with batches in flight
 * side by side.
 */
import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { ROOT_CONTEXT } from "@opentelemetry/api";
import {
  consumerName,
  deleteStreams,
  eventHeaders,
  PoisonEventError,
  provisionStreams,
  startConsumer,
  streamName,
  type BatchEventHandler,
  type ConsumerOptions,
  type RunningConsumer,
} from "../../src/events/index.ts";
import { testNatsPrefix } from "../../src/testing/harness.ts";
import { readStream, setupEventsTest, TEST_STREAM_LIMITS, waitUntil, type EventsTestEnv } from "./support.ts";

// Real Postgres, NATS and child processes on a shared machine: more than bun's 5 s default when run bare.
setDefaultTimeout(30_000);

const TYPE = "coursemesh.events.v1.SeatsChanged";
type Payload = Record<string, unknown>;
let env: EventsTestEnv;
const running: RunningConsumer[] = [];
const prefixes: string[] = [];

beforeAll(async () => {
  env = await setupEventsTest("batchtest", ["SEATS", "DLQ"]);
  // No unique key: an event applied twice shows up twice.
  await env.sql`create table applied (consumer text, event_id uuid, aggregate_id text, version bigint, batch_size int, n bigserial)`;
});

afterAll(async () => {
  for (const consumer of running) await consumer.stop();
  for (const prefix of prefixes) await deleteStreams(env.jsm, prefix).catch(() => {});
  await env.cleanup();
});

/**
 * Streams of its own for one test (nats-server 2.9 takes one filter subject per consumer, so tests
 * do not share a stream); the database and its dedupe tables are shared, keyed by durable.
 */
async function lane(): Promise<string> {
  const prefix = testNatsPrefix();
  prefixes.push(prefix);
  await provisionStreams(env.jsm, prefix, ["SEATS", "DLQ"], { limits: { SEATS: TEST_STREAM_LIMITS, DLQ: TEST_STREAM_LIMITS } });
  return prefix;
}

/** Publishes an event as the relay would; `msgId` lets a test slip a repeat past JetStream's duplicate window. */
async function publish(prefix: string, aggregate: string, version: number | null, payload: Payload = {}, ids: { eventId?: string; msgId?: string } = {}) {
  const eventId = ids.eventId ?? Bun.randomUUIDv7();
  const h = eventHeaders({ eventId, subject: `seats.changed.${aggregate}`, type: TYPE, aggregateId: aggregate, aggregateVersion: version, body: "" }, ROOT_CONTEXT);
  const body = JSON.stringify({ eventId, monitorId: aggregate, aggregateVersion: version, ...payload });
  await env.js.publish(`${prefix}.seats.changed.${aggregate}`, body, { msgID: ids.msgId ?? eventId, headers: h });
  return eventId;
}

/** A batch handler that records every event it applies (set-based, like a real one). */
function recording(durable: string, also?: (events: Parameters<BatchEventHandler<Payload>>[1]) => Promise<void> | void): BatchEventHandler<Payload, number> {
  return async (tx, events) => {
    await tx`
      insert into applied (consumer, event_id, aggregate_id, version, batch_size)
      select ${durable}, e, a, v, ${events.length}
      from unnest(${events.map((e) => e.eventId)}::uuid[], ${events.map((e) => e.aggregateId ?? "")}::text[],
                  ${events.map((e) => e.aggregateVersion ?? 0)}::bigint[]) with ordinality as t(e, a, v, i)
      order by i`;
    await also?.(events);
    return events.length;
  };
}

async function consumeBatches(
  prefix: string,
  durable: string,
  batchHandler: BatchEventHandler<Payload, number>,
  options: Partial<ConsumerOptions<Payload, number>> = {},
): Promise<RunningConsumer> {
  const consumer = await startConsumer<Payload, number>({
    sql: env.sql,
    nats: env.nc,
    service: "batchtest",
    prefix,
    logger: env.logger,
    stream: "SEATS",
    durable,
    batchHandler,
    batchSize: 50,
    backoffMs: [50],
    ...options,
  });
  running.push(consumer);
  return consumer;
}

async function settled(prefix: string, durable: string, timeoutMs = 15_000) {
  return waitUntil(
    () => env.jsm.consumers.info(streamName(prefix, "SEATS"), consumerName(prefix, durable)),
    (info) => info.num_pending === 0 && info.num_ack_pending === 0,
    timeoutMs,
    `${durable} to ack everything`,
  );
}

async function appliedBy(durable: string) {
  return env.sql<{ event_id: string; aggregate_id: string; version: number; batch_size: number }[]>`
    select event_id::text, aggregate_id, version::int, batch_size from applied where consumer = ${durable} order by n`;
}

test("a batch skips stale versions and repeats, inside the batch and against earlier batches", async () => {
  const prefix = await lane();
  const first = await publish(prefix, "agg-stale", 1);
  const repeated = await publish(prefix, "agg-stale", 3);
  await publish(prefix, "agg-stale", 2);
  // The same event again under another Nats-Msg-Id (beyond JetStream's duplicate window, say).
  await publish(prefix, "agg-stale", 3, {}, { eventId: repeated, msgId: "second-copy" });
  const fourth = await publish(prefix, "agg-stale", 4);
  const other = await publish(prefix, "agg-other", 7);
  const afterCommits: number[] = [];
  const consumer = await consumeBatches(prefix, "stale", recording("stale"), {
    afterCommit: (result) => afterCommits.push(result),
  });
  await settled(prefix, "stale");
  expect((await appliedBy("stale")).map((r) => r.event_id)).toEqual([first, repeated, fourth, other]);
  expect(consumer.stats()).toMatchObject({ applied: 4, stale: 1, duplicate: 1, retried: 0 });
  // Several events went in one transaction, and afterCommit heard of every applied one.
  expect(Math.max(...(await appliedBy("stale")).map((r) => r.batch_size))).toBeGreaterThan(1);
  expect(afterCommits.reduce((a, b) => a + b, 0)).toBe(4);

  // A later batch meets the versions the first one stored: 2 is stale now, 5 is new.
  await publish(prefix, "agg-stale", 2);
  const fifth = await publish(prefix, "agg-stale", 5);
  await waitUntil(() => consumer.stats().applied, (n) => n === 5, 10_000, "the fifth version");
  await settled(prefix, "stale");
  expect((await appliedBy("stale")).map((r) => r.event_id)).toEqual([first, repeated, fourth, other, fifth]);
  expect(consumer.stats()).toMatchObject({ applied: 5, stale: 2, duplicate: 1 });
  const versions = await env.sql`select aggregate_id, version::int from consumer_aggregate_versions where consumer = 'stale' order by aggregate_id`;
  expect([...versions]).toEqual([
    { aggregate_id: "agg-other", version: 7 },
    { aggregate_id: "agg-stale", version: 5 },
  ]);
  // Every event decided has its dedupe row, the stale ones too (a repeat of them is a duplicate).
  const [dedupe] = await env.sql`select count(*)::int as n from consumed_events where consumer = 'stale'`;
  expect(dedupe!.n).toBe(7);
});

test("a poison event fails its batch, and the rest of the batch commits without it; it goes to the DLQ after its attempts", async () => {
  const prefix = await lane();
  const ids: string[] = [];
  // No versions: these are facts, and the healthy ones must not wait for the poison one.
  for (let i = 0; i < 8; i++) ids.push(await publish(prefix, `agg-poison-${i % 3}`, null, i === 3 ? { poison: true } : {}));
  const poisonId = ids[3]!;
  const batchesWithPoison: number[] = [];
  const consumer = await consumeBatches(
    prefix,
    "poison",
    recording("poison", (events) => {
      if (events.some((e) => e.payload.poison)) {
        batchesWithPoison.push(events.length);
        throw new Error("seat text 'abc' is not a number");
      }
    }),
    { maxDeliver: 3 },
  );
  await settled(prefix, "poison");
  const applied = await appliedBy("poison");
  // Each healthy event exactly once (the failed batch's writes were rolled back); never the poison one.
  expect(applied.map((r) => r.event_id).sort()).toEqual(ids.filter((id) => id !== poisonId).sort());
  expect(batchesWithPoison[0]).toBeGreaterThan(1);
  // The first batch with it, then it alone on each of its three deliveries.
  expect(batchesWithPoison.filter((size) => size === 1)).toHaveLength(3);
  expect(consumer.stats()).toMatchObject({ applied: 7, "dead-lettered": 1, retried: 2, duplicate: 0 });

  const dead = (await readStream({ ...env, prefix }, "DLQ")).filter((m) => m.subject.endsWith(".poison"));
  expect(dead).toHaveLength(1);
  expect(dead[0]!.subject).toBe(`${prefix}.dlq.batchtest.poison`);
  expect(dead[0]!.headers!.get("Coursemesh-Error")).toBe("seat text 'abc' is not a number");
  expect(dead[0]!.headers!.get("Coursemesh-Dead-Letter-Reason")).toBe("attempts");
  expect(dead[0]!.headers!.get("Coursemesh-Deliveries")).toBe("3");
  expect(dead[0]!.json<Payload>()).toMatchObject({ eventId: poisonId, poison: true });
});

test("PoisonEventError from a batch is pinned on the one event that throws it alone: DLQ on the first delivery", async () => {
  const prefix = await lane();
  const healthy = [await publish(prefix, "agg-reject", null), await publish(prefix, "agg-reject", null)];
  const rejected = await publish(prefix, "agg-reject", null, { reject: true });
  healthy.push(await publish(prefix, "agg-reject", null));
  const consumer = await consumeBatches(
    prefix,
    "reject",
    recording("reject", (events) => {
      if (events.some((e) => e.payload.reject)) throw new PoisonEventError("monitor m1 does not exist");
    }),
    { maxDeliver: 5 },
  );
  await settled(prefix, "reject");
  expect((await appliedBy("reject")).map((r) => r.event_id)).toEqual(healthy);
  expect(consumer.stats()).toMatchObject({ applied: 3, "dead-lettered": 1, retried: 0 });
  const dead = (await readStream({ ...env, prefix }, "DLQ")).filter((m) => m.subject.endsWith(".reject"));
  expect(dead.map((m) => [m.headers!.get("Coursemesh-Dead-Letter-Reason"), m.headers!.get("Coursemesh-Deliveries")])).toEqual([["poison", "1"]]);
  expect(dead[0]!.json<Payload>()).toMatchObject({ eventId: rejected });
});

test("with batches in flight side by side, each aggregate's events are applied once and in order", async () => {
  const prefix = await lane();
  const AGGREGATES = 12;
  const VERSIONS = 15;
  for (let version = 1; version <= VERSIONS; version++) {
    await Promise.all(Array.from({ length: AGGREGATES }, (_, a) => publish(prefix, `agg-order-${a}`, version)));
  }
  let inFlight = 0;
  let mostInFlight = 0;
  const consumer = await consumeBatches(
    prefix,
    "order",
    recording("order", async () => {
      inFlight++;
      mostInFlight = Math.max(mostInFlight, inFlight);
      // Uneven transaction times, so batches finish out of the order they started in.
      await Bun.sleep(5 + Math.random() * 25);
      inFlight--;
    }),
    { batchSize: 7, concurrency: 4, skipStaleVersions: false },
  );
  await settled(prefix, "order", 20_000);
  const applied = await appliedBy("order");
  expect(applied).toHaveLength(AGGREGATES * VERSIONS);
  const byAggregate = new Map<string, number[]>();
  for (const row of applied) byAggregate.set(row.aggregate_id, [...(byAggregate.get(row.aggregate_id) ?? []), row.version]);
  expect(byAggregate.size).toBe(AGGREGATES);
  for (const versions of byAggregate.values()) expect(versions).toEqual(Array.from({ length: VERSIONS }, (_, i) => i + 1));
  expect(mostInFlight).toBeGreaterThan(1);
  expect(consumer.stats()).toMatchObject({ applied: AGGREGATES * VERSIONS, retried: 0 });
});

test("stop() decides the batch in flight and the events already fetched; a new consumer applies the rest, each once", async () => {
  const prefix = await lane();
  const ids: string[] = [];
  for (let i = 0; i < 60; i++) ids.push(await publish(prefix, `agg-stop-${i % 6}`, null));
  let started = 0;
  const slow = await consumeBatches(
    prefix,
    "stop",
    recording("stop", async () => {
      started++;
      await Bun.sleep(300);
    }),
    // A short ack wait: what the stopped consumer's fetch dropped comes back soon.
    { batchSize: 5, concurrency: 1, ackWaitMs: 1500 },
  );
  await waitUntil(() => started, (n) => n >= 1, 5000, "the first batch");
  await slow.stop();
  running.splice(running.indexOf(slow), 1);
  const atStop = (await appliedBy("stop")).length;
  // The batch in flight and the ones queued behind it (up to batchSize × concurrency) were decided.
  expect(atStop).toBeGreaterThanOrEqual(5);
  expect(atStop).toBeLessThan(ids.length);
  expect(slow.stats()).toMatchObject({ applied: atStop, retried: 0 });
  await consumeBatches(prefix, "stop", recording("stop"), { ackWaitMs: 1500 });
  await settled(prefix, "stop");
  const applied = await appliedBy("stop");
  expect(applied.map((r) => r.event_id).sort()).toEqual([...ids].sort());
});

test("a consumer needs exactly one of handler and batchHandler", async () => {
  const base = { sql: env.sql, nats: env.nc, service: "batchtest", prefix: env.prefix, logger: env.logger, stream: "SEATS" as const, durable: "neither" };
  await expect(startConsumer(base)).rejects.toThrow("exactly one of handler and batchHandler");
  await expect(startConsumer({ ...base, handler: async () => {}, batchHandler: async () => {} })).rejects.toThrow("exactly one of handler and batchHandler");
});
