/**
 * A consumer process SIGKILLed mid-stream and started again applies every event exactly once: the
 * handler's writes and the dedupe row commit together, and the ack follows the commit, so whatever
 * the kill cut short is redelivered and either applied (not committed before) or skipped (committed,
 * ack lost). Its NATS connection is also cut once before the kill, so acks are surely lost after
 * their commits and the dedupe table has work to do. The same holds in batch mode, killed right
 * after a batch commits (before any of it is acked) and while a batch's transaction is open.
 */
import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import type { Relay } from "../../src/events/index.ts";
import {
  expectEachAppliedOnce,
  relaySeatChanges,
  setupEventsTest,
  spawnFixture,
  startNatsProxy,
  waitForDrained,
  waitUntil,
  type EventsTestEnv,
  type Fixture,
  type SeverableProxy,
} from "./support.ts";

// Real Postgres, NATS and child processes on a shared machine: more than bun's 5 s default when run bare.
setDefaultTimeout(30_000);

const AGGREGATES = 20;
let proxy: SeverableProxy;
const envs: EventsTestEnv[] = [];
const relays: Relay[] = [];
const consumers: Fixture[] = [];

beforeAll(async () => {
  proxy = await startNatsProxy();
});

afterAll(async () => {
  for (const consumer of consumers) await consumer.kill().catch(() => {});
  for (const relay of relays) await relay.stop();
  await proxy?.close();
  for (const env of envs) await env.cleanup();
});

/** A database and streams of the test's own, `total` seat changes in SEATS, and a way to start consumer processes. */
async function crashWorld(schema: string, durable: string, total: number) {
  const env = await setupEventsTest(schema, ["SEATS", "DLQ"]);
  envs.push(env);
  // No unique key: an event applied twice would show up as two rows.
  await env.sql`create table applied (event_id uuid not null, aggregate_id text, version bigint, pid int, applied_at timestamptz default clock_timestamp())`;
  relays.push(await relaySeatChanges(env, schema, total, AGGREGATES));
  return {
    env,
    appliedCount: async () => (await env.sql`select count(*)::int as n from applied`)[0]!.n as number,
    startConsumer(settings: Record<string, string>): Fixture {
      const consumer = spawnFixture("consumer-process.ts", {
        DATABASE_URL: env.db.url,
        SCHEMA: env.schema,
        NATS_URL: proxy.url,
        NATS_PREFIX: env.prefix,
        SERVICE: schema,
        DURABLE: durable,
        ACK_WAIT_MS: "1000",
        // Every event must be applied here: with stale-skipping on, an event cut short by the kill is
        // redelivered after newer ones of its aggregate and (correctly) skipped as stale.
        SKIP_STALE: "false",
        ...settings,
      });
      consumers.push(consumer);
      return consumer;
    },
  };
}

test("a consumer killed with SIGKILL mid-stream and restarted applies each event once", async () => {
  const TOTAL = 1500;
  const { env, appliedCount, startConsumer } = await crashWorld("crash", "crashy", TOTAL);
  const settings = { HANDLER_DELAY_MS: "3", CONCURRENCY: "8" };
  const first = startConsumer(settings);
  await waitUntil(appliedCount, (n) => n >= 300, 20_000, "the first consumer to be mid-stream");
  expect(proxy.sever()).toBeGreaterThan(0);
  await waitUntil(appliedCount, (n) => n >= 700, 20_000, "the first consumer to carry on after the cut");
  await first.kill();
  const appliedAtKill = await appliedCount();
  expect(appliedAtKill).toBeLessThan(TOTAL);

  startConsumer(settings);
  await waitForDrained(env, "crashy");
  await expectEachAppliedOnce(env, "crashy", TOTAL, AGGREGATES);
  console.log(JSON.stringify({ appliedAtKill }));
}, 60_000);

test("batch mode: killed after a batch's commit, then inside a batch's transaction, then restarted: each event applied once", async () => {
  const TOTAL = 2000;
  const { env, appliedCount, startConsumer } = await crashWorld("batchcrash", "batchcrash", TOTAL);
  const batches = { BATCH_SIZE: "50", CONCURRENCY: "2" };
  // Transactions the fixture holds open right now (its handler sleeps inside them).
  const openTransactions = async () =>
    (await env.sql`
      select count(*)::int as n from pg_stat_activity
      where datname = current_database() and application_name = 'consumer-fixture' and state like 'idle in transaction%'`)[0]!.n as number;

  // 1. Dies right after its third batch commits: that batch is in Postgres and unacked in NATS, so
  // it comes back whole and the set-based dedupe insert must turn it into duplicates.
  const first = startConsumer({ ...batches, CRASH_AFTER_BATCHES: "3" });
  await waitUntil(() => first.process.exitCode ?? first.process.signalCode, (code) => code !== null, 20_000, "the first consumer to kill itself");
  expect(first.process.signalCode).toBe("SIGKILL");
  expect(first.lines.find((line) => line.msg?.startsWith("CRASH_AFTER_BATCHES"))).toBeDefined();
  const afterFirst = await appliedCount();
  expect(afterFirst).toBeGreaterThanOrEqual(3);

  // 2. Slow batches (each holds its transaction 150 ms); its NATS connection is cut once (acks
  // lost after their commits), then it is killed while a transaction is open (rolled back).
  const second = startConsumer({ ...batches, HANDLER_DELAY_MS: "150" });
  await waitUntil(appliedCount, (n) => n >= afterFirst + 200, 20_000, "the second consumer to be mid-stream");
  expect(proxy.sever()).toBeGreaterThan(0);
  await waitUntil(appliedCount, (n) => n >= afterFirst + 400, 20_000, "the second consumer to carry on after the cut");
  await waitUntil(openTransactions, (n) => n > 0, 10_000, "a batch transaction to be open");
  await second.kill();
  const afterSecond = await appliedCount();
  expect(afterSecond).toBeLessThan(TOTAL);

  // 3. A clean restart drains the rest.
  const third = startConsumer(batches);
  await waitForDrained(env, "batchcrash");
  await expectEachAppliedOnce(env, "batchcrash", TOTAL, AGGREGATES);
  expect(await third.stop()).toBe(0);
  console.log(JSON.stringify({ afterFirst, afterSecond }));
}, 90_000);
