// Two scraper processes share the monitors through leases: none is checked twice in an interval,
// both do work, and a result whose lease was lost is never written. HTTP mode keeps 100 monitors
// cheap on two cores; the lease logic does not depend on the fetch mode.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { FetchMode, MonitorHealth, type Monitor } from "@coursemesh/proto/coursemesh/scraper/v1/scraper";
import { createSql, type Sql } from "@coursemesh/shared/db.ts";
import { createLogger } from "@coursemesh/shared/logger.ts";
import type { ServiceProcess } from "@coursemesh/shared/testing/harness.ts";
import { testToken } from "@coursemesh/shared/testing/harness.ts";
import { createMonitorFeed } from "../src/feed.ts";
import { parseSeatText } from "../src/seats.ts";
import { recordOutcome } from "../src/schedule.ts";
import { claimOne } from "../src/store.ts";
import { beartracks, call, eventually, monitorClient, scraperEnv, watchStream, type ScraperEnv } from "./support.ts";

const INTERVAL_S = 2;
let env: ScraperEnv;
let replicas: ServiceProcess[];
let clients: ReturnType<typeof monitorClient>[];
let token: string;
let sql: Sql;

beforeAll(async () => {
  env = await scraperEnv({ env: { SCRAPER_CHECK_TIMEOUT_MS: "8000", SCRAPER_HTTP_CONCURRENCY: "16" } });
  replicas = [await env.startScraper(), await env.startScraper()];
  clients = replicas.map((r) => monitorClient(r.grpcAddress));
  token = await testToken("alice", ["student"]);
  sql = createSql({ url: env.db.url, schema: "scraper", max: 2 });
});

afterAll(async () => {
  for (const c of clients ?? []) c.close();
  await sql?.end();
  await env?.close();
});

async function create(page: string, overrides: Record<string, unknown> = {}): Promise<Monitor> {
  const client = clients[Math.floor(Math.random() * clients.length)]!;
  const response = await call(
    client,
    "createMonitor",
    { url: `${env.registrar.url}/pages/${page}?render=server`, label: page, intervalSeconds: INTERVAL_S, notifyEmails: [], extractor: beartracks(), fetchMode: FetchMode.FETCH_MODE_HTTP, isolation: 0, ...overrides },
    token,
  );
  return response.monitor!;
}

async function checksByReplica(replica: ServiceProcess): Promise<number> {
  const metrics = await (await fetch(`${replica.httpUrl}/metrics`)).text();
  return [...metrics.matchAll(/^coursemesh_scraper_checks_total\{[^}]*outcome="ok"[^}]*\} (\d+)/gm)].reduce((sum, m) => sum + Number(m[1]), 0);
}

describe("two replicas", () => {
  test("share 100 monitors: none is checked twice in one interval, and both do work", async () => {
    const pages = Array.from({ length: 100 }, (_, i) => `r${i}`);
    const monitors = await Promise.all(pages.map((p) => create(p)));
    await eventually(async () => (pages.every((p) => env.registrar.hits(p).length > 0) ? true : undefined), 20_000, "a first check of each");
    const from = Date.now();
    await Bun.sleep(10_000);
    const to = Date.now();

    const tooSoon: string[] = [];
    let checks = 0;
    for (const page of pages) {
      const at = env.registrar.hits(page).map((h) => h.at).filter((t) => t >= from && t <= to);
      checks += at.length;
      for (let i = 1; i < at.length; i++) if (at[i]! - at[i - 1]! < INTERVAL_S * 1000) tooSoon.push(`${page}: ${at[i]! - at[i - 1]!} ms`);
    }
    expect(tooSoon).toEqual([]);
    // Each monitor kept its cadence: about 10 s / (2 s + jitter + the check) ≈ 4 checks.
    expect(checks).toBeGreaterThanOrEqual(100 * 3);
    const [a, b] = await Promise.all(replicas.map(checksByReplica));
    expect(a).toBeGreaterThan(20);
    expect(b).toBeGreaterThan(20);
    const states = await sql`select health, count(*)::int as n from monitors where id = any(${monitors.map((m) => m.id)}::uuid[]) group by health`;
    expect(states.map((r) => [r.health, r.n])).toEqual([["HEALTHY", 100]]);
    await sql`update monitors set mode = 'PAUSED', next_check_at = null where id = any(${monitors.map((m) => m.id)}::uuid[])`;
  }, 90_000);

  test("a deletion on one replica reaches watchers on the other; one whose news was lost arrives by the safety poll", async () => {
    const [announced, unannounced] = [await create("deleted-a", { intervalSeconds: 3600 }), await create("deleted-b", { intervalSeconds: 3600 })];
    const watcher = watchStream(clients[0]!, [], token);
    try {
      await eventually(async () => (watcher.received.some((r) => r.monitor?.id === unannounced.id) ? true : undefined), 5000, "the current states");
      await call(clients[1]!, "deleteMonitor", { id: announced.id }, token);
      await eventually(async () => watcher.received.find((r) => r.deletedMonitorId === announced.id), 5000, "the deletion from the other replica");
      // Deleted without a word on the feed (as when a replica dies between commit and publish).
      await sql`delete from monitors where id = ${unannounced.id}`;
      await eventually(async () => watcher.received.find((r) => r.deletedMonitorId === unannounced.id), 15_000, "the deletion found by the poll");
    } finally {
      watcher.cancel();
    }
  }, 30_000);

  test("a replica whose lease was taken over cannot write its result", async () => {
    env.registrar.setFault("fenced", "hang");
    const monitor = await create("fenced", { intervalSeconds: 1 });
    // Some replica claims it and its request hangs.
    const first = await eventually(async () => {
      const [row] = await sql`select lease_token, lease_owner from monitors where id = ${monitor.id} and lease_token is not null`;
      return row && env.registrar.hits("fenced").length > 0 ? (row as { lease_token: string; lease_owner: string }) : undefined;
    }, 10_000, "a check in flight");
    // The holder stalls past its lease (as after a long pause or a partition): the lease expires and
    // a replica takes the monitor over with a new token.
    await sql`update monitors set lease_until = clock_timestamp() - interval '1 second' where id = ${monitor.id}`;
    await eventually(async () => {
      const [row] = await sql`select lease_token from monitors where id = ${monitor.id}`;
      return row?.lease_token && row.lease_token !== first.lease_token ? true : undefined;
    }, 10_000, "a takeover");
    // Both hanging requests now fail at once: only the current holder's failure may be written.
    env.registrar.setFault("fenced", "error");
    const discarded = await eventually(async () => {
      const owner = replicas.find((r) => r.logs.some((l) => l.msg === "check result discarded: the lease was lost (expired or taken over)" && l.monitorId === monitor.id));
      const [row] = await sql`select consecutive_failures, lease_token from monitors where id = ${monitor.id}`;
      return owner && row!.consecutive_failures >= 1 ? row : undefined;
    }, 15_000, "the stale result discarded and the current one written");
    expect(discarded.consecutive_failures).toBe(1);
  }, 60_000);

  test("recording under a lost lease writes nothing: no state, no history, no event", async () => {
    const monitor = await create("lease-unit", { intervalSeconds: 3600 });
    await call(clients[0]!, "pauseMonitor", { id: monitor.id }, token);
    const logger = createLogger("scraper", "silent");
    const ctx = { sql, feed: createMonitorFeed(env.nats, env.prefix, logger), logger, settings: { errorAfterFailures: 3, maxBackoffSeconds: 3600 } };
    const stale = (await claimOne(sql, monitor.id, "test-a", 60_000))!;
    await sql`update monitors set lease_until = clock_timestamp() - interval '1 second' where id = ${monitor.id}`;
    const current = (await claimOne(sql, monitor.id, "test-b", 60_000))!;
    expect(current.token).not.toBe(stale.token);
    const [before] = await sql`select * from monitors where id = ${monitor.id}`;

    const lost = await recordOutcome(ctx, stale, { kind: "ok", seats: parseSeatText("11 of 30 seats open"), observedAt: new Date() });
    expect(lost).toBeNull();
    const [after] = await sql`select * from monitors where id = ${monitor.id}`;
    expect(after).toEqual(before!);
    expect(await sql`select id from seat_changes where monitor_id = ${monitor.id}`).toHaveLength(0);

    const written = await recordOutcome(ctx, current, { kind: "ok", seats: parseSeatText("12 of 30 seats open"), observedAt: new Date() });
    expect(written!.changed).toBe(true);
    expect(written!.monitor.health).toBe("HEALTHY");
    const event = await env.waitForEvent((e) => e.subject === `seats.changed.${monitor.id}`);
    expect(event.data.current.open).toBe(12);
    await Bun.sleep(300);
    expect(env.events.filter((e) => e.data.monitorId === monitor.id && e.data.current?.open === 11)).toEqual([]);
    expect((await call(clients[1]!, "getMonitor", { id: monitor.id }, token)).monitor!.health).toBe(MonitorHealth.MONITOR_HEALTH_HEALTHY);
  }, 30_000);
});
