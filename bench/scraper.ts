/**
 * Scraper benchmark (issue 6). Prints one JSON object. Everything runs on loopback: the demo
 * registrar (fixed JavaScript render delay) listens on 127.0.0.x aliases, so monitors spread over
 * many hosts as they would over real registrars; the scraper runs as its own process, as deployed.
 * - browser checks/s through the real service (claim → headless check → record → event) for several
 *   pool sizes (SCRAPER_BROWSER_CONCURRENCY), and the best;
 * - the baseline in the same run, at the best pool size's concurrency: the tracker's method — a new
 *   browser context per monitor, a new page per check, a fixed 1.5 s wait — through the same guard
 *   proxy and the same Chromium flags, and the ratio;
 * - HTTP-mode checks/s with 1,000 monitors;
 * - memory: PSS of the scraper (Bun) plus its Chromium with those monitors idle, per monitor;
 * - a change's latency: seats changed on the page → seats.changed on NATS, against interval + 2 s.
 * Uses a fresh database and NATS prefix and removes them. Run: bun run bench/scraper.ts
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import postgres from "postgres";
import puppeteer from "puppeteer-core";
import { FetchMode, MonitorServiceClient } from "../proto/gen/coursemesh/scraper/v1/scraper.ts";
import { chromiumArgs, findChromium } from "../services/scraper/src/browser.ts";
import { startRegistrar } from "../services/scraper/src/demo/registrar.ts";
import { readSeatsFromDocument } from "../services/scraper/src/extract.ts";
import { startGuardProxy } from "../services/scraper/src/guard-proxy.ts";
import { deleteStreams } from "../services/shared/src/events/index.ts";
import { unary } from "../services/shared/src/grpc/client.ts";
import { createLogger } from "../services/shared/src/logger.ts";
import { createTestDatabase, startServiceProcess, TEST_NATS_URL, testNatsPrefix, testToken, type ServiceProcess } from "../services/shared/src/testing/harness.ts";
import { round } from "./stats.ts";

const TARGETS = { browser_checks_per_s: 10, browser_ratio_to_baseline: 3, http_checks_per_s: 300, memory_per_idle_monitor_mib: 1, change_latency_extra_s: 2 };
const RENDER_DELAY_MS = Number(process.env.BENCH_RENDER_DELAY_MS ?? 400);
const BROWSER_HOSTS = 16;
const HTTP_HOSTS = 200;
const BROWSER_MONITORS = 160;
const HTTP_MONITORS = 1000;
const POOL_SIZES = (process.env.BENCH_POOL_SIZES ?? "4,8,12,16,24").split(",").map(Number);
const WARMUP_MS = 3000;
const WINDOW_MS = 8000;
const TRACKER_WAIT_MS = 1500;
const LATENCY_INTERVAL_S = 2;
const LATENCY_SAMPLES = 5;

const aliases = (count: number, from = 2) => Array.from({ length: count }, (_, i) => `127.0.${Math.floor((from + i) / 256)}.${(from + i) % 256}`);

/** PSS (KiB) of a process and all its descendants, from /proc/<pid>/smaps_rollup. */
function treePssKib(rootPid: number): number {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
    } catch {
      // exited meanwhile
    }
  }
  let total = 0;
  const stack = [rootPid];
  while (stack.length) {
    const pid = stack.pop()!;
    try {
      const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
      total += Number(/^Pss:\s+(\d+) kB/m.exec(rollup)?.[1] ?? 0);
    } catch {
      // exited meanwhile
    }
    stack.push(...(children.get(pid) ?? []));
  }
  return total;
}

async function okChecks(scraper: ServiceProcess, mode: "BROWSER" | "HTTP"): Promise<number> {
  const metrics = await (await fetch(`${scraper.httpUrl}/metrics`)).text();
  const line = new RegExp(`^coursemesh_scraper_checks_total\\{[^}]*fetch_mode="${mode}"[^}]*outcome="ok"[^}]*\\} (\\d+)`, "m").exec(metrics);
  return Number(line?.[1] ?? 0);
}

async function main() {
  const db = await createTestDatabase();
  const prefix = testNatsPrefix();
  const nats = await connect({ servers: TEST_NATS_URL });
  const browserHosts = aliases(BROWSER_HOSTS);
  const httpHosts = aliases(HTTP_HOSTS, 2 + BROWSER_HOSTS);
  const registrar = startRegistrar({ hosts: [...browserHosts, ...httpHosts], renderDelayMs: RENDER_DELAY_MS });
  const sql = postgres(db.url, { max: 2, onnotice: () => {}, connection: { search_path: "scraper" } });
  const token = await testToken("bench", ["student"]);
  const baseEnv = {
    DATABASE_URL: db.url,
    NATS_PREFIX: prefix,
    SCRAPER_ALLOW_PRIVATE_HOSTS: "true",
    SCRAPER_MIN_INTERVAL_SECONDS: "1",
    SCRAPER_POLL_MS: "100",
    LOG_LEVEL: "info",
  };
  let scraper: ServiceProcess | undefined;
  const start = async (env: Record<string, string>) => {
    scraper = await startServiceProcess("scraper", { env: { ...baseEnv, ...env }, timeoutMs: 60_000 });
    return scraper;
  };
  const stop = async () => {
    if (scraper && scraper.process.exitCode === null) await scraper.stop();
    scraper = undefined;
  };
  const createMany = async (client: MonitorServiceClient, requests: object[]) => {
    const ids: string[] = [];
    for (let i = 0; i < requests.length; i += 32) {
      const batch = await Promise.all(requests.slice(i, i + 32).map((r) => unary(client.createMonitor.bind(client), r as never, { token })));
      ids.push(...batch.map((b) => b.monitor!.id));
    }
    return ids;
  };
  const monitorRequest = (url: string, fetchMode: FetchMode, intervalSeconds = 1) => ({
    url,
    label: "CMPUT 201 LEC A1",
    intervalSeconds,
    notifyEmails: [],
    extractor: { kind: { $case: "beartracks", value: { courseCode: "CMPUT 201", sectionLabel: "LEC A1" } } },
    fetchMode,
    isolation: 0,
  });
  const activate = (ids: string[]) => sql`update monitors set mode = 'ACTIVE', next_check_at = clock_timestamp(), lease_token = null, lease_until = null where id = any(${ids}::uuid[])`;
  const pause = (ids: string[]) => sql`update monitors set mode = 'PAUSED', next_check_at = null where id = any(${ids}::uuid[])`;

  try {
    // --- Browser checks/s by pool size --------------------------------------------------------
    const browserUrls = Array.from({ length: BROWSER_MONITORS }, (_, i) => `http://${browserHosts[i % BROWSER_HOSTS]}:${registrar.port}/pages/b${i}`);
    let browserIds: string[] = [];
    const byPoolSize: Record<string, number> = {};
    for (const size of POOL_SIZES) {
      const s = await start({ SCRAPER_BROWSER_CONCURRENCY: String(size) });
      const client = new MonitorServiceClient(s.grpcAddress, grpc.credentials.createInsecure());
      if (browserIds.length === 0) browserIds = await createMany(client, browserUrls.map((u) => monitorRequest(u, FetchMode.FETCH_MODE_BROWSER)));
      else await activate(browserIds);
      // Warm up until every page of the pool has finished a check (contexts and pages exist), then measure.
      const warmupEnd = Date.now() + 20_000;
      while ((await okChecks(s, "BROWSER")) < size && Date.now() < warmupEnd) await Bun.sleep(200);
      await Bun.sleep(WARMUP_MS);
      const before = await okChecks(s, "BROWSER");
      await Bun.sleep(WINDOW_MS);
      byPoolSize[size] = round(((await okChecks(s, "BROWSER")) - before) / (WINDOW_MS / 1000));
      await pause(browserIds);
      client.close();
      await stop();
    }
    const [bestSize, bestRate] = Object.entries(byPoolSize).sort((a, b) => b[1] - a[1])[0]!;

    // --- The tracker's method at the same concurrency -------------------------------------------
    const logger = createLogger("bench", "silent");
    const proxy = await startGuardProxy({ allowPrivate: true, allowedHosts: [] }, logger);
    const profile = mkdtempSync(join(tmpdir(), "bench-tracker-"));
    const browser = await puppeteer.launch({
      executablePath: findChromium(process.env.SCRAPER_CHROMIUM_PATH),
      headless: true,
      pipe: true,
      userDataDir: join(profile, "profile"),
      args: chromiumArgs(proxy.url),
      env: { ...process.env, XDG_CONFIG_HOME: join(profile, "xdg-config"), XDG_CACHE_HOME: join(profile, "xdg-cache") },
    });
    const spec = { kind: "beartracks" as const, courseCode: "CMPUT 201", sectionLabel: "LEC A1" };
    const readExpression = `(${readSeatsFromDocument.toString()})(document, ${JSON.stringify(spec)})`;
    let trackerChecks = 0;
    let trackerMisses = 0;
    const trackerEnd = Date.now() + WARMUP_MS + WINDOW_MS;
    const trackerFrom = Date.now() + WARMUP_MS;
    await Promise.all(
      Array.from({ length: Number(bestSize) }, async (_, worker) => {
        for (let n = worker; Date.now() < trackerEnd; n += Number(bestSize)) {
          const context = await browser.createBrowserContext({ proxyServer: proxy.url, proxyBypassList: ["<-loopback>"] });
          try {
            const page = await context.newPage();
            await page.goto(browserUrls[n % browserUrls.length]!, { timeout: 20_000 });
            await Bun.sleep(TRACKER_WAIT_MS);
            const reading = (await page.evaluate(readExpression)) as { found: boolean };
            if (Date.now() >= trackerFrom && Date.now() <= trackerEnd) {
              if (reading.found) trackerChecks++;
              else trackerMisses++;
            }
          } finally {
            await context.close();
          }
        }
      }),
    );
    await browser.close();
    await proxy.stop();
    rmSync(profile, { recursive: true, force: true });
    const baselineRate = round(trackerChecks / (WINDOW_MS / 1000));

    // --- HTTP-mode checks/s with 1,000 monitors; then all idle for the memory reading ----------
    const s = await start({ SCRAPER_BROWSER_CONCURRENCY: bestSize });
    const client = new MonitorServiceClient(s.grpcAddress, grpc.credentials.createInsecure());
    const httpIds = await createMany(
      client,
      Array.from({ length: HTTP_MONITORS }, (_, i) => monitorRequest(`http://${httpHosts[i % HTTP_HOSTS]}:${registrar.port}/pages/h${i}?render=server`, FetchMode.FETCH_MODE_HTTP)),
    );
    await Bun.sleep(WARMUP_MS);
    const httpBefore = await okChecks(s, "HTTP");
    await Bun.sleep(WINDOW_MS);
    const httpRate = round(((await okChecks(s, "HTTP")) - httpBefore) / (WINDOW_MS / 1000));

    // Browser monitors run briefly too, so Chromium and its host contexts are part of the reading.
    await activate(browserIds);
    await Bun.sleep(3000);
    const all = [...browserIds, ...httpIds];
    await sql`update monitors set interval_seconds = 3600, next_check_at = clock_timestamp() + interval '1 hour' where id = any(${all}::uuid[])`;
    await Bun.sleep(3000);
    const idlePssKib = treePssKib(s.process.pid);

    // --- A change's latency to seats.changed --------------------------------------------------
    const [watched] = await createMany(client, [monitorRequest(`http://${browserHosts[0]}:${registrar.port}/pages/latency`, FetchMode.FETCH_MODE_BROWSER, LATENCY_INTERVAL_S)]);
    const changed: { open: number; at: number }[] = [];
    const sub = nats.subscribe(`${prefix}.seats.changed.${watched}`);
    void (async () => {
      for await (const m of sub) changed.push({ open: m.json<{ current: { open?: number } }>().current.open ?? -1, at: Date.now() });
    })();
    await Bun.sleep(LATENCY_INTERVAL_S * 1000 + 2000);
    const latencies: number[] = [];
    for (let i = 1; i <= LATENCY_SAMPLES; i++) {
      // Changes land at arbitrary points of the interval.
      await Bun.sleep(Math.random() * LATENCY_INTERVAL_S * 1000);
      const at = Date.now();
      registrar.setSeats("latency", "CMPUT 201", "LEC A1", { open: i, capacity: 30, waitlist: 0 });
      const deadline = at + 15_000;
      while (!changed.some((c) => c.open === i) && Date.now() < deadline) await Bun.sleep(10);
      const seen = changed.find((c) => c.open === i);
      latencies.push(seen ? seen.at - at : Number.POSITIVE_INFINITY);
    }
    sub.unsubscribe();
    client.close();

    // Memory of a scraper with Chromium up and a single monitor, for the per-monitor difference.
    await stop();
    const fresh = await start({});
    const freshClient = new MonitorServiceClient(fresh.grpcAddress, grpc.credentials.createInsecure());
    const [one] = await createMany(freshClient, [monitorRequest(`http://${browserHosts[1]}:${registrar.port}/pages/fresh`, FetchMode.FETCH_MODE_BROWSER, 3600)]);
    await unary(freshClient.checkNow.bind(freshClient), { id: one! }, { token });
    await Bun.sleep(2000);
    const freshPssKib = treePssKib(fresh.process.pid);
    freshClient.close();
    await stop();

    const idleMonitors = all.length;
    const perMonitorMib = idlePssKib / 1024 / idleMonitors;
    const maxLatencyS = Math.max(...latencies) / 1000;
    const result = {
      bench: "scraper",
      machine: { cores: navigator.hardwareConcurrency },
      setup: {
        render_delay_ms: RENDER_DELAY_MS,
        browser_hosts: BROWSER_HOSTS,
        browser_monitors: BROWSER_MONITORS,
        http_hosts: HTTP_HOSTS,
        http_monitors: HTTP_MONITORS,
        window_s: WINDOW_MS / 1000,
        settings: "defaults (host cap 2, host gap 250 ms, HTTP concurrency 64) except SCRAPER_BROWSER_CONCURRENCY",
      },
      browser: {
        checks_per_s_by_pool_size: byPoolSize,
        best_pool_size: Number(bestSize),
        checks_per_s: bestRate,
        baseline: { method: "context per monitor, new page per check, fixed 1.5 s wait", concurrency: Number(bestSize), checks_per_s: baselineRate, misses: trackerMisses },
        ratio_to_baseline: round(bestRate / Math.max(baselineRate, 0.001), 2),
      },
      http: { checks_per_s: httpRate, monitors: HTTP_MONITORS },
      memory: {
        idle_monitors: idleMonitors,
        pss_mib: round(idlePssKib / 1024),
        pss_mib_one_monitor: round(freshPssKib / 1024),
        per_idle_monitor_mib: round(perMonitorMib, 3),
        per_idle_monitor_marginal_kib: round((idlePssKib - freshPssKib) / (idleMonitors - 1), 1),
      },
      change_latency: {
        interval_s: LATENCY_INTERVAL_S,
        samples_ms: latencies.map((l) => Math.round(l)),
        max_s: round(maxLatencyS, 2),
        target_s: LATENCY_INTERVAL_S + TARGETS.change_latency_extra_s,
      },
      targets: TARGETS,
      pass: {
        browser_checks_per_s: bestRate >= TARGETS.browser_checks_per_s,
        browser_ratio_to_baseline: bestRate / Math.max(baselineRate, 0.001) >= TARGETS.browser_ratio_to_baseline,
        http_checks_per_s: httpRate >= TARGETS.http_checks_per_s,
        memory_per_idle_monitor: perMonitorMib <= TARGETS.memory_per_idle_monitor_mib,
        change_latency: maxLatencyS <= LATENCY_INTERVAL_S + TARGETS.change_latency_extra_s,
      },
    };
    console.log(JSON.stringify(result, null, 2));
  } finally {
    await stop();
    await sql.end();
    await deleteStreams(await jetstreamManager(nats), prefix).catch(() => {});
    await nats.close();
    await registrar.stop();
    await db.drop();
  }
}

await main();
process.exit(0);
