import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { context, ROOT_CONTEXT, trace, TraceFlags } from "@opentelemetry/api";
import { enqueue, enqueueMany, insertOutboxRows, startRelay, streamName, type PublishedEvent, type Relay } from "../../src/events/index.ts";
import { startTelemetry } from "../../src/telemetry.ts";
import { TEST_NATS_URL } from "../../src/testing/harness.ts";
import { readStream, setupEventsTest, spawnFixture, startNatsProxy, waitUntil, type EventsTestEnv, type Fixture } from "./support.ts";

// Real Postgres, NATS and child processes on a shared machine: more than bun's 5 s default when run bare.
setDefaultTimeout(30_000);

const TYPE = "coursemesh.events.v1.SeatsChanged";
let env: EventsTestEnv;
const relays: Relay[] = [];
const fixtures: Fixture[] = [];

beforeAll(async () => {
  // Installs W3C propagation (no exporter): rows written here keep the active traceparent.
  startTelemetry("relaytest");
  env = await setupEventsTest("relaytest", ["SEATS"]);
});

afterAll(async () => {
  for (const fixture of fixtures) await fixture.kill();
  for (const relay of relays) await relay.stop();
  await env.cleanup();
});

async function relay(options: Partial<Parameters<typeof startRelay>[0]> = {}): Promise<Relay> {
  const started = await startRelay({
    sql: env.sql,
    natsServers: [TEST_NATS_URL],
    service: "relaytest",
    prefix: env.prefix,
    logger: env.logger,
    standbyRetryMs: 100,
    pollIntervalMs: 100,
    ...options,
  });
  relays.push(started);
  return started;
}

async function stopAll(): Promise<void> {
  while (relays.length) await relays.pop()!.stop();
}

const streamCount = async () => (await env.jsm.streams.info(streamName(env.prefix, "SEATS"))).state.messages;
const outboxCount = async () => (await env.sql`select count(*)::int as n from outbox`)[0]!.n as number;

test("an event goes out with the contract's headers and body, continuing the writer's trace", async () => {
  const traceId = randomBytes(16).toString("hex");
  const spanId = randomBytes(8).toString("hex");
  const writer = trace.setSpanContext(ROOT_CONTEXT, { traceId, spanId, traceFlags: TraceFlags.SAMPLED, isRemote: true });
  const eventId = await context.with(writer, () =>
    env.sql.begin((tx) =>
      enqueue(tx, {
        subject: "seats.changed.m-headers",
        type: TYPE,
        aggregateId: "m-headers",
        aggregateVersion: 7,
        payload: { monitorId: "m-headers", label: "CMPUT 201 LEC A1", current: { open: 3, raw: "Seats: 3/30" } },
      }),
    ),
  );
  expect(eventId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);

  const published: PublishedEvent[] = [];
  await relay({ onPublished: (e) => published.push(e) });
  await waitUntil(() => published.length, (n) => n >= 1, 5000, "the publish");
  await stopAll();

  const stored = await env.jsm.streams.getMessage(streamName(env.prefix, "SEATS"), { last_by_subj: `${env.prefix}.seats.changed.m-headers` });
  expect(stored).toBeTruthy();
  const h = stored!.header;
  expect(h.get("Nats-Msg-Id")).toBe(eventId);
  expect(h.get("Content-Type")).toBe("application/json");
  expect(h.get("Coursemesh-Event")).toBe(TYPE);
  expect(h.get("Coursemesh-Aggregate-Id")).toBe("m-headers");
  expect(h.get("Coursemesh-Aggregate-Version")).toBe("7");
  expect(h.get("traceparent")).toBe(`00-${traceId}-${spanId}-01`);
  const body = stored!.json<Record<string, unknown>>();
  expect(body).toMatchObject({ eventId, monitorId: "m-headers", aggregateVersion: 7, current: { open: 3, raw: "Seats: 3/30" } });
  expect(Date.parse(body.occurredAt as string)).toBeGreaterThan(Date.now() - 60_000);
  // Acknowledged rows leave the outbox.
  expect(await outboxCount()).toBe(0);
});

test("a rolled-back transaction publishes nothing, and a subject no stream carries fails the writer's transaction", async () => {
  const before = await streamCount();
  await expect(
    env.sql.begin(async (tx) => {
      await enqueue(tx, { subject: "seats.changed.m-rollback", type: TYPE, payload: {} });
      throw new Error("the state change failed");
    }),
  ).rejects.toThrow("the state change failed");
  await expect(env.sql.begin((tx) => enqueue(tx, { subject: "seats.opened.m1", type: TYPE, payload: {} }))).rejects.toThrow(/belongs to no stream/);
  expect(await outboxCount()).toBe(0);
  await relay();
  await Bun.sleep(300);
  expect(await streamCount()).toBe(before);
  await stopAll();
});

test.each([
  { window: 2048, lateEvents: 1 },
  { window: 5, lateEvents: 20 },
])("a transaction that took lower ids but committed later is published before its aggregate's next event (window $window)", async ({ window, lateEvents }) => {
  const published: PublishedEvent[] = [];
  await relay({ maxInFlight: window, onPublished: (e) => published.push(e) });
  const aggregate = `x-late-${window}`;
  const event = (id: string, version: number) => ({
    subject: `seats.changed.${id}`,
    type: TYPE,
    aggregateId: id,
    aggregateVersion: version,
    payload: { monitorId: id },
  });

  // T1 takes the lower ids for X and stays open while T2 (for Y) commits and is published.
  let releaseT1!: () => void;
  const t1Enqueued = Promise.withResolvers<void>();
  const t1 = env.sql.begin(async (tx) => {
    await enqueueMany(tx, Array.from({ length: lateEvents }, (_, i) => event(aggregate, i + 1)));
    t1Enqueued.resolve();
    await new Promise<void>((resolve) => (releaseT1 = resolve));
  });
  await t1Enqueued.promise;
  const [yId] = await env.sql.begin((tx) => enqueueMany(tx, [event(`y-early-${window}`, 1)]));
  await waitUntil(() => published.some((e) => e.eventId === yId), Boolean, 5000, "Y to be published");
  // Long enough for the relay to check the oldest running transaction (T1) a few times: its floor
  // must stay below T1's ids.
  for (let i = 0; i < 6; i++) {
    await env.sql.begin((tx) => enqueue(tx, event(`z-meanwhile-${window}-${i}`, 1)));
    await Bun.sleep(60);
  }

  releaseT1();
  await t1;
  await env.sql.begin((tx) => enqueue(tx, event(aggregate, lateEvents + 1)));
  await waitUntil(() => published.length, (n) => n >= lateEvents + 8, 5000, "every X event");
  await stopAll();

  const messages = await readStream(env, "SEATS");
  const xVersions = messages.filter((m) => m.subject.endsWith(`.${aggregate}`)).map((m) => Number(m.headers!.get("Coursemesh-Aggregate-Version")));
  expect(xVersions).toEqual(Array.from({ length: lateEvents + 1 }, (_, i) => i + 1));
});

test("a standby takes over when the leader stops, and each event is published once", async () => {
  const first = await relay();
  await first.whenLeading();
  const second = await relay();
  await Bun.sleep(250);
  expect(first.leading).toBe(true);
  expect(second.leading).toBe(false);

  const before = await streamCount();
  await env.sql.begin((tx) => enqueueMany(tx, Array.from({ length: 50 }, (_, i) => ({ subject: `seats.health.h${i}`, type: TYPE, payload: { i } }))));
  await waitUntil(streamCount, (n) => n >= before + 50, 5000, "the first 50");

  await first.stop();
  relays.splice(relays.indexOf(first), 1);
  await second.whenLeading();
  await env.sql.begin((tx) => enqueueMany(tx, Array.from({ length: 50 }, (_, i) => ({ subject: `seats.health.k${i}`, type: TYPE, payload: { i } }))));
  await waitUntil(streamCount, (n) => n >= before + 100, 5000, "the next 50");
  await Bun.sleep(200);
  expect(await streamCount()).toBe(before + 100);
  await stopAll();
});

test("a write in a process whose relay stands by wakes the leader in another process through one NOTIFY", async () => {
  // The leader polls only every 30 s, so a prompt publish means the NOTIFY woke it.
  const leader = spawnFixture("relay-process.ts", {
    DATABASE_URL: env.db.url,
    SCHEMA: env.schema,
    NATS_URL: TEST_NATS_URL,
    NATS_PREFIX: env.prefix,
    SERVICE: "relaytest",
    POLL_INTERVAL_MS: "30000",
  });
  fixtures.push(leader);
  await leader.waitForLine((l) => l.msg === "outbox relay leading");
  const standby = await relay();
  await Bun.sleep(200);
  expect(standby.leading).toBe(false);

  const before = await streamCount();
  const startedAt = performance.now();
  await env.sql.begin((tx) => enqueue(tx, { subject: "seats.changed.m-notify", type: TYPE, payload: {} }));
  await waitUntil(streamCount, (n) => n === before + 1, 5000, "the woken leader to publish");
  expect(performance.now() - startedAt).toBeLessThan(2000);
  await leader.stop();
  await stopAll();
});

test("while NATS is unreachable rows wait in the outbox, and go out in order once it is back", async () => {
  const proxy = await startNatsProxy();
  try {
    proxy.pause();
    const published: PublishedEvent[] = [];
    // A window of one publish at a time must work as well as a wide one.
    await relay({ natsServers: [proxy.url], maxInFlight: 1, onPublished: (e) => published.push(e) });
    const ids = await env.sql.begin((tx) =>
      enqueueMany(tx, Array.from({ length: 30 }, (_, i) => ({ subject: "seats.changed.m-outage", type: TYPE, aggregateId: "m-outage", aggregateVersion: i + 1, payload: {} }))),
    );
    await Bun.sleep(700);
    expect(published).toHaveLength(0);
    expect(await outboxCount()).toBe(30);
    proxy.resume();
    await waitUntil(() => published.length, (n) => n >= 30, 10_000, "the rows to go out after the outage");
    expect(published.map((e) => e.eventId)).toEqual(ids);
    await waitUntil(outboxCount, (n) => n === 0, 5000, "the outbox to empty");
  } finally {
    await stopAll();
    await proxy.close();
  }
});

test("a deferred relay starts no read until the deferral ends or a wake-up, and renewing it never holds events past the cap", async () => {
  const published: PublishedEvent[] = [];
  const leader = await relay({ onPublished: (e) => published.push(e) });
  await leader.whenLeading();
  // Rows written by SQL the way the allocator's batch writes them: nothing wakes the relay but its 100 ms poll.
  const write = (tag: string, count: number) =>
    env.sql.begin((tx) =>
      insertOutboxRows(
        tx,
        tx`select gen_random_uuid() as event_id, ${`seats.changed.${tag}`}::text as subject, ${TYPE}::text as event_type, ${tag}::text as aggregate_id,
             i::bigint as aggregate_version, '{}' as payload, i as position
           from generate_series(1, ${count}::int) i`,
        { traceparent: null, tracestate: null },
      ),
    );
  const publishedOf = (tag: string) => published.filter((e) => e.subject === `seats.changed.${tag}`).length;

  leader.defer(800);
  await write("m-defer", 5);
  await Bun.sleep(400);
  expect(publishedOf("m-defer")).toBe(0);
  await waitUntil(() => publishedOf("m-defer"), (n) => n === 5, 5000, "the deferred rows to go out");
  await waitUntil(outboxCount, (n) => n === 0, 5000, "the outbox to empty");

  leader.defer(10_000);
  await write("m-woken", 5);
  const wokenAt = performance.now();
  leader.wake();
  await waitUntil(() => publishedOf("m-woken"), (n) => n === 5, 5000, "the woken relay to publish");
  expect(performance.now() - wokenAt).toBeLessThan(1500);
  await waitUntil(outboxCount, (n) => n === 0, 5000, "the outbox to empty");

  // A writer that keeps deferring (a stampede that never ends) holds its events back 2 s at most.
  const renew = setInterval(() => leader.defer(500), 50);
  try {
    const startedAt = performance.now();
    leader.defer(500);
    await write("m-capped", 5);
    await waitUntil(() => publishedOf("m-capped"), (n) => n === 5, 6000, "the capped deferral to let the rows out");
    expect(performance.now() - startedAt).toBeGreaterThan(1500);
  } finally {
    clearInterval(renew);
    await stopAll();
  }
});
