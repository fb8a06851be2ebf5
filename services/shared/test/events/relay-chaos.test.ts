/**
 * The outbox's promise under failure: 10,000 events written by concurrent transactions reach the
 * stream exactly once each, in commit order per aggregate, while the relay's NATS connection is cut
 * twice and the leading relay process is SIGKILLed once (a standby process takes over). The relays
 * are child processes that reach NATS through a proxy the test severs; nats-server itself is shared
 * and never restarted. Worth its ~10 s: it is the only test of the relay's crash and reconnect paths.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { enqueueMany, streamName, type OutboxEvent } from "../../src/events/index.ts";
import { readStream, setupEventsTest, spawnFixture, startNatsProxy, waitUntil, type EventsTestEnv, type Fixture, type SeverableProxy } from "./support.ts";

const TOTAL = 10_000;
const AGGREGATES = 40;
const EVENTS_PER_TRANSACTION = 5;
const WRITERS = 4;
const TYPE = "coursemesh.events.v1.SeatsChanged";

let env: EventsTestEnv;
let proxy: SeverableProxy;
const relays: Fixture[] = [];

beforeAll(async () => {
  env = await setupEventsTest("chaos", ["SEATS"]);
  await env.sql`create table monitors (id text primary key, version bigint not null default 0)`;
  await env.sql`insert into monitors (id) select 'm' || g from generate_series(1, ${AGGREGATES}) g`;
  proxy = await startNatsProxy();
});

afterAll(async () => {
  for (const relay of relays) await relay.kill().catch(() => {});
  await proxy?.close();
  await env?.cleanup();
});

function startRelayProcess(): Fixture {
  const relay = spawnFixture("relay-process.ts", {
    DATABASE_URL: env.db.url,
    SCHEMA: env.schema,
    NATS_URL: proxy.url,
    NATS_PREFIX: env.prefix,
    SERVICE: "chaos",
    STANDBY_RETRY_MS: "150",
  });
  relays.push(relay);
  return relay;
}

const isLeading = (line: Record<string, any>) => line.msg === "outbox relay leading";

/** Writes `count` events like a service would: lock the aggregate, bump its version, enqueue, commit. */
async function writeEvents(count: number, paceMs: number): Promise<void> {
  let written = 0;
  const writer = async () => {
    while (written < count) {
      written += EVENTS_PER_TRANSACTION;
      const monitor = `m${1 + Math.floor(Math.random() * AGGREGATES)}`;
      await env.sql.begin(async (tx) => {
        const [row] = await tx`update monitors set version = version + ${EVENTS_PER_TRANSACTION} where id = ${monitor} returning version::int`;
        const first = row!.version - EVENTS_PER_TRANSACTION + 1;
        const events: OutboxEvent[] = Array.from({ length: EVENTS_PER_TRANSACTION }, (_, i) => ({
          subject: `seats.changed.${monitor}`,
          type: TYPE,
          aggregateId: monitor,
          aggregateVersion: first + i,
          payload: { monitorId: monitor, current: { open: (first + i) % 30, raw: `Seats: ${(first + i) % 30}/30` } },
        }));
        await enqueueMany(tx, events);
        // Commits land in a different order from the ids taken, as they do under load.
        if (Math.random() < 0.2) await Bun.sleep(Math.random() < 0.1 ? 20 + Math.random() * 30 : Math.random() * 4);
      });
      await Bun.sleep(paceMs);
    }
  };
  await Promise.all(Array.from({ length: WRITERS }, writer));
}

test("10,000 events survive two cut connections and a SIGKILLed relay: each once, in commit order per aggregate", async () => {
  const first = startRelayProcess();
  await first.waitForLine(isLeading);
  const second = startRelayProcess();
  await second.waitForLine((l) => l.ready === true);

  const stored = async () => (await env.jsm.streams.info(streamName(env.prefix, "SEATS"))).state.messages;
  const disruptions: string[] = [];
  let writing = true;
  const writes = writeEvents(TOTAL, 3).finally(() => (writing = false));

  // Disrupt at fixed points of progress, while the writers are still going.
  await waitUntil(stored, (n) => n >= 1500, 20_000, "1,500 events before the first cut");
  disruptions.push(`cut ${proxy.sever()} connection(s) at ${await stored()}`);
  await waitUntil(stored, (n) => n >= 4000, 20_000, "4,000 events before the SIGKILL");
  const leader = [first, second].find((r) => r.lines.some(isLeading))!;
  const standby = leader === first ? second : first;
  await leader.kill();
  disruptions.push(`killed the leader at ${await stored()}`);
  await standby.waitForLine(isLeading, 10_000);
  await waitUntil(stored, (n) => n >= 6500, 20_000, "6,500 events before the second cut");
  disruptions.push(`cut ${proxy.sever()} connection(s) at ${await stored()}`);
  expect(writing).toBe(true);
  await writes;

  await waitUntil(stored, (n) => n >= TOTAL, 30_000, "every event in the stream");
  await waitUntil(async () => (await env.sql`select count(*)::int as n from outbox`)[0]!.n, (n) => n === 0, 10_000, "an empty outbox");
  // Anything still in flight would show up now.
  await Bun.sleep(300);
  expect(await stored()).toBe(TOTAL);

  const messages = await readStream(env, "SEATS", TOTAL);
  expect(messages.length).toBe(TOTAL);
  expect(new Set(messages.map((m) => m.headers!.get("Nats-Msg-Id"))).size).toBe(TOTAL);
  const versions = new Map<string, number[]>();
  for (const m of messages) {
    const aggregate = m.headers!.get("Coursemesh-Aggregate-Id");
    versions.set(aggregate, [...(versions.get(aggregate) ?? []), Number(m.headers!.get("Coursemesh-Aggregate-Version"))]);
  }
  const finalVersions = new Map((await env.sql`select id, version::int from monitors`).map((r) => [r.id as string, r.version as number]));
  for (const [aggregate, seen] of versions) {
    // Commit order per aggregate is version order: 1, 2, 3, … with nothing missing or repeated.
    expect({ aggregate, ordered: seen.every((v, i) => v === i + 1), count: seen.length }).toEqual({
      aggregate,
      ordered: true,
      count: finalVersions.get(aggregate)!,
    });
  }

  // The disruptions really happened: two cuts hit live connections and the standby took over.
  expect(disruptions.filter((d) => d.startsWith("cut") && !d.startsWith("cut 0"))).toHaveLength(2);
  const restarts = [...first.lines, ...second.lines].filter((l) => l.msg === "outbox relay restarting from the oldest unpublished row");
  expect(restarts.length).toBeGreaterThanOrEqual(2);
  console.log(JSON.stringify({ disruptions, restarts: restarts.length }));
}, 90_000);
