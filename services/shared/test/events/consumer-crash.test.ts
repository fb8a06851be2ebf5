/**
 * A consumer process SIGKILLed mid-stream and started again applies every event exactly once: the
 * handler's writes and the dedupe row commit together, and the ack follows the commit, so whatever
 * the kill cut short is redelivered and either applied (not committed before) or skipped (committed,
 * ack lost). Its NATS connection is also cut once before the kill, so acks are surely lost after
 * their commits and the dedupe table has work to do.
 */
import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { consumerName, enqueueMany, startRelay, streamName, type Relay } from "../../src/events/index.ts";
import { TEST_NATS_URL } from "../../src/testing/harness.ts";
import { setupEventsTest, spawnFixture, startNatsProxy, waitUntil, type EventsTestEnv, type Fixture, type SeverableProxy } from "./support.ts";

// Real Postgres, NATS and child processes on a shared machine: more than bun's 5 s default when run bare.
setDefaultTimeout(30_000);

const TOTAL = 1500;
const DURABLE = "crashy";
let env: EventsTestEnv;
let relay: Relay | undefined;
let proxy: SeverableProxy;
const consumers: Fixture[] = [];

beforeAll(async () => {
  env = await setupEventsTest("crash", ["SEATS", "DLQ"]);
  // No unique key: an event applied twice would show up as two rows.
  proxy = await startNatsProxy();
  await env.sql`create table applied (event_id uuid not null, aggregate_id text, version bigint, pid int, applied_at timestamptz default clock_timestamp())`;
});

afterAll(async () => {
  for (const consumer of consumers) await consumer.kill().catch(() => {});
  await relay?.stop();
  await proxy?.close();
  await env.cleanup();
});

function startConsumerProcess(): Fixture {
  const consumer = spawnFixture("consumer-process.ts", {
    DATABASE_URL: env.db.url,
    SCHEMA: env.schema,
    NATS_URL: proxy.url,
    NATS_PREFIX: env.prefix,
    SERVICE: "crash",
    DURABLE,
    HANDLER_DELAY_MS: "3",
    CONCURRENCY: "8",
    ACK_WAIT_MS: "1000",
    // Every event must be applied here: with stale-skipping on, an event cut short by the kill is
    // redelivered after newer ones of its aggregate and (correctly) skipped as stale.
    SKIP_STALE: "false",
  });
  consumers.push(consumer);
  return consumer;
}

test("a consumer killed with SIGKILL mid-stream and restarted applies each event once", async () => {
  relay = await startRelay({ sql: env.sql, natsServers: [TEST_NATS_URL], service: "crash", prefix: env.prefix, logger: env.logger });
  for (let batch = 0; batch < TOTAL / 100; batch++) {
    await env.sql.begin((tx) =>
      enqueueMany(
        tx,
        Array.from({ length: 100 }, (_, i) => {
          const monitor = `m${i % 20}`;
          return { subject: `seats.changed.${monitor}`, type: "coursemesh.events.v1.SeatsChanged", aggregateId: monitor, aggregateVersion: batch * 5 + Math.floor(i / 20) + 1, payload: { monitorId: monitor } };
        }),
      ),
    );
  }
  await waitUntil(async () => (await env.jsm.streams.info(streamName(env.prefix, "SEATS"))).state.messages, (n) => n === TOTAL, 10_000, "all events in the stream");

  const appliedCount = async () => (await env.sql`select count(*)::int as n from applied`)[0]!.n as number;
  const first = startConsumerProcess();
  await waitUntil(appliedCount, (n) => n >= 300, 20_000, "the first consumer to be mid-stream");
  expect(proxy.sever()).toBeGreaterThan(0);
  await waitUntil(appliedCount, (n) => n >= 700, 20_000, "the first consumer to carry on after the cut");
  await first.kill();
  const appliedAtKill = await appliedCount();
  expect(appliedAtKill).toBeLessThan(TOTAL);

  startConsumerProcess();
  await waitUntil(
    () => env.jsm.consumers.info(streamName(env.prefix, "SEATS"), consumerName(env.prefix, DURABLE)),
    (info) => info.num_pending === 0 && info.num_ack_pending === 0,
    30_000,
    "the restarted consumer to ack everything",
  );

  const [totals] = await env.sql`select count(*)::int as rows, count(distinct event_id)::int as events from applied`;
  expect(totals).toEqual({ rows: TOTAL, events: TOTAL });
  const [dedupe] = await env.sql`select count(*)::int as n from consumed_events where consumer = ${DURABLE}`;
  expect(dedupe!.n).toBe(TOTAL);
  const perAggregate = await env.sql`select aggregate_id, count(distinct version)::int as versions from applied group by aggregate_id`;
  expect(perAggregate).toHaveLength(20);
  for (const row of perAggregate) expect(row.versions).toBe(TOTAL / 20);
  console.log(JSON.stringify({ appliedAtKill }));
}, 60_000);
