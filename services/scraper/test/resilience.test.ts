// Failure on the outside must stay contained: broken pages do not slow or touch healthy monitors, a
// monitor nobody can check goes STALE and then ERROR with a reason, and a killed Chromium is
// relaunched without losing a monitor. Real Chromium, Postgres and NATS; the demo registrar on
// 127.0.0.1 (healthy pages) and 127.0.0.2 (broken pages: the per-host cap is per host by design).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { MonitorHealth, type Monitor } from "@coursemesh/proto/coursemesh/scraper/v1/scraper";
import type { ServiceProcess } from "@coursemesh/shared/testing/harness.ts";
import { testToken } from "@coursemesh/shared/testing/harness.ts";
import { beartracks, call, eventually, monitorClient, scraperEnv, type ScraperEnv } from "./support.ts";

let env: ScraperEnv;
let scraper: ServiceProcess;
let client: ReturnType<typeof monitorClient>;
let token: string;

beforeAll(async () => {
  env = await scraperEnv({ env: { SCRAPER_CHECK_TIMEOUT_MS: "2000", SCRAPER_BROWSER_CONCURRENCY: "8" }, registrar: { hosts: ["127.0.0.1", "127.0.0.2"] } });
  scraper = await env.startScraper();
  client = monitorClient(scraper.grpcAddress);
  token = await testToken("alice", ["student"]);
});

afterAll(async () => {
  client?.close();
  await env?.close();
});

async function create(url: string, intervalSeconds = 1): Promise<Monitor> {
  return (await call(client, "createMonitor", { url, label: "CMPUT 201 LEC A1", intervalSeconds, notifyEmails: [], extractor: beartracks(), fetchMode: 0, isolation: 0 }, token)).monitor!;
}
const get = async (id: string) => (await call(client, "getMonitor", { id }, token)).monitor!;

/** Mean and largest gap between consecutive loads of each page within [from, to]. */
function gaps(pages: string[], from: number, to: number): { mean: number; max: number; perPage: number[] } {
  const all: number[] = [];
  const perPage: number[] = [];
  for (const page of pages) {
    const at = env.registrar.hits(page).map((h) => h.at).filter((t) => t >= from && t <= to);
    perPage.push(at.length);
    for (let i = 1; i < at.length; i++) all.push(at[i]! - at[i - 1]!);
  }
  return { mean: all.reduce((a, b) => a + b, 0) / Math.max(1, all.length), max: Math.max(0, ...all), perPage };
}

describe("containment", () => {
  test("pages that answer 500, hang or lose their seats do not slow or touch ten healthy monitors", async () => {
    const healthyPages = Array.from({ length: 10 }, (_, i) => `healthy-${i}`);
    const healthy = await Promise.all(healthyPages.map((p) => create(`${env.registrar.urls[0]}/pages/${p}`)));
    await eventually(async () => ((await Promise.all(healthy.map((m) => get(m.id)))).every((m) => m.health === MonitorHealth.MONITOR_HEALTH_HEALTHY) ? true : undefined), 20_000, "all healthy");

    // Baseline: how often the healthy ones are checked with nothing broken around.
    const baselineFrom = Date.now();
    await Bun.sleep(6000);
    const baseline = gaps(healthyPages, baselineFrom, Date.now());

    const broken = { error: "broken-500", hang: "broken-hang", drop: "broken-drop" } as const;
    for (const [mode, page] of Object.entries(broken)) env.registrar.setFault(page, mode as "error" | "hang" | "drop");
    const brokenMonitors = await Promise.all(Object.values(broken).map((p) => create(`${env.registrar.urls[1]}/pages/${p}`)));
    const eventsBefore = env.events.length;
    const withBrokenFrom = Date.now();
    await Bun.sleep(8000);
    const withBroken = gaps(healthyPages, withBrokenFrom, Date.now());

    // Not slower: the healthy monitors keep their cadence (interval 1 s + jitter + a ~0.3 s check).
    expect(withBroken.mean).toBeLessThan(baseline.mean * 1.5 + 300);
    expect(withBroken.max).toBeLessThan(4000);
    expect(Math.min(...withBroken.perPage)).toBeGreaterThanOrEqual(4);
    // Not touched: still HEALTHY with their seats, no error, no health event about them.
    for (const m of await Promise.all(healthy.map((h) => get(h.id)))) {
      expect(m).toMatchObject({ health: MonitorHealth.MONITOR_HEALTH_HEALTHY, lastError: "", consecutiveFailures: 0 });
      expect(m.seats).toMatchObject({ open: 0, waitlist: 4 });
    }
    const healthyIds = new Set(healthy.map((m) => m.id));
    expect(env.events.slice(eventsBefore).filter((e) => e.subject.startsWith("seats.health.") && healthyIds.has(e.data.monitorId))).toEqual([]);

    // The broken ones say what is wrong, in words a person can act on.
    const errors = await eventually(async () => {
      const ms = await Promise.all(brokenMonitors.map((m) => get(m.id)));
      return ms.every((m) => m.health === MonitorHealth.MONITOR_HEALTH_ERROR) ? ms.map((m) => m.lastError) : undefined;
    }, 20_000, "broken monitors in ERROR");
    expect(errors).toEqual([
      "the page answered HTTP 500",
      "the page did not load within 2 s",
      "section 'LEC A1' under course 'CMPUT 201' shows no seat text (.seatText) (waited 2 s)",
    ]);
  }, 90_000);

  test("a monitor with no good check for 3 intervals goes STALE, then ERROR after 3 failures, then HEALTHY again", async () => {
    const monitor = await create(`${env.registrar.urls[1]}/pages/stale`);
    await env.waitForEvent((e) => e.subject === `seats.health.${monitor.id}` && e.data.health === "MONITOR_HEALTH_HEALTHY");
    env.registrar.setFault("stale", "hang");
    const stale = await env.waitForEvent((e) => e.subject === `seats.health.${monitor.id}` && e.data.health === "MONITOR_HEALTH_STALE", 15_000);
    expect(stale.data).toMatchObject({ monitorId: monitor.id, previousHealth: "MONITOR_HEALTH_HEALTHY", label: "CMPUT 201 LEC A1" });
    expect((await get(monitor.id)).health).toBe(MonitorHealth.MONITOR_HEALTH_STALE);
    const error = await env.waitForEvent((e) => e.subject === `seats.health.${monitor.id}` && e.data.health === "MONITOR_HEALTH_ERROR", 30_000);
    expect(error.data).toMatchObject({ previousHealth: "MONITOR_HEALTH_STALE", lastError: "the page did not load within 2 s", consecutiveFailures: 3 });
    expect(error.data.aggregateVersion).toBeGreaterThan(stale.data.aggregateVersion);
    env.registrar.setFault("stale", "none");
    await call(client, "checkNow", { id: monitor.id }, token);
    const recovered = await env.waitForEvent((e) => e.subject === `seats.health.${monitor.id}` && e.data.health === "MONITOR_HEALTH_HEALTHY" && e.data.previousHealth === "MONITOR_HEALTH_ERROR");
    expect(recovered.data.lastError ?? "").toBe("");
    expect((await get(monitor.id)).seats).toMatchObject({ open: 0, waitlist: 4 });
  }, 90_000);
});

describe("the browser", () => {
  test("Chromium killed mid-check is relaunched; the check is not held against the monitor and the next one is good", async () => {
    const monitor = await create(`${env.registrar.urls[0]}/pages/crash`);
    const bystander = await create(`${env.registrar.urls[0]}/pages/bystander`);
    await env.waitForEvent((e) => e.subject === `seats.changed.${monitor.id}`);
    const launches = () => scraper.logs.filter((l) => l.msg === "Chromium launched");
    expect(launches()).toHaveLength(1);
    const pid = launches()[0]!.pid as number;

    env.registrar.setFault("crash", "hang");
    const hits = env.registrar.hits("crash").length;
    await eventually(async () => (env.registrar.hits("crash").length > hits ? true : undefined), 10_000, "a check in flight");
    process.kill(pid, "SIGKILL");
    env.registrar.setFault("crash", "none");
    env.registrar.setSeats("crash", "CMPUT 201", "LEC A1", { open: 6, capacity: 30, waitlist: 0 });

    const event = await env.waitForEvent((e) => e.subject === `seats.changed.${monitor.id}` && e.data.current?.open === 6, 20_000);
    expect(event.data.previous).toMatchObject({ open: 0, waitlist: 4 });
    expect(launches()).toHaveLength(2);
    expect(launches()[1]!.pid).not.toBe(pid);
    expect(scraper.logs.some((l) => l.msg === "Chromium went away; it is relaunched for the next check")).toBe(true);
    const after = await get(monitor.id);
    expect(after).toMatchObject({ health: MonitorHealth.MONITOR_HEALTH_HEALTHY, consecutiveFailures: 0, lastError: "" });
    // No monitor was lost: the other one is still checked on schedule.
    const before = env.registrar.hits("bystander").length;
    await eventually(async () => (env.registrar.hits("bystander").length >= before + 2 ? true : undefined), 10_000, "bystander checks");
    expect((await get(bystander.id)).health).toBe(MonitorHealth.MONITOR_HEALTH_HEALTHY);
  }, 60_000);

  test("SIGTERM: in-flight work finishes, Chromium and its profile are gone, exit 0", async () => {
    const chromium = scraper.logs.filter((l) => l.msg === "Chromium launched").at(-1)!.pid as number;
    expect(await scraper.stop()).toBe(0);
    const alive = (pid: number) => {
      try {
        process.kill(pid, 0);
        return !readFileSync(`/proc/${pid}/stat`, "utf8").includes(") Z ");
      } catch {
        return false;
      }
    };
    await eventually(async () => (alive(chromium) ? undefined : true), 5000, "Chromium gone");
    expect(readdirSync(tmpdir()).filter((d) => d.startsWith(`coursemesh-chromium-${scraper.process.pid}-`))).toEqual([]);
  }, 30_000);
});
