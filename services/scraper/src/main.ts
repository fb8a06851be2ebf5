/**
 * The scraper process: watches seat availability on registration pages. Wiring only: the SSRF guard
 * proxy, one Chromium (launched on the first browser check), the scheduler and sweeper, the outbox
 * relay for SEATS events, and MonitorService.
 */
import { hostname } from "node:os";
import { required } from "@coursemesh/shared/config.ts";
import { startServiceEvents } from "@coursemesh/shared/events/wiring.ts";
import { runService } from "@coursemesh/shared/service.ts";
import { BrowserPool, findChromium } from "./browser.ts";
import { createChecker } from "./check.ts";
import { createMonitorFeed } from "./feed.ts";
import { monitorService } from "./grpc.ts";
import { startGuardProxy, type GuardPolicy } from "./guard-proxy.ts";
import type { ScheduleSettings } from "./monitors.ts";
import { registerMonitorGauges } from "./metrics.ts";
import { createNotifierGateway } from "./notifier.ts";
import { startScheduler } from "./schedule.ts";

await runService({
  service: "scraper",
  migrationsDir: new URL("../migrations", import.meta.url).pathname,
  async setup({ config, logger, sql, nats, shutdown }) {
    const prefix = config.NATS_PREFIX ?? "";
    const relay = await startServiceEvents({ config, sql, nats, logger, service: "scraper", streams: ["SEATS"] });

    const policy: GuardPolicy = {
      allowPrivate: required(config, "SCRAPER_ALLOW_PRIVATE_HOSTS"),
      allowedHosts: required(config, "SCRAPER_ALLOWED_HOSTS"),
    };
    if (policy.allowPrivate) logger.warn("SCRAPER_ALLOW_PRIVATE_HOSTS=true: monitors may reach private and loopback addresses; never in production");
    const proxy = await startGuardProxy(policy, logger);
    const timeoutMs = required(config, "SCRAPER_CHECK_TIMEOUT_MS");
    const hostCap = required(config, "SCRAPER_HOST_CONCURRENCY");
    const browser = new BrowserPool({
      chromiumPath: findChromium(config.SCRAPER_CHROMIUM_PATH),
      proxyUrl: proxy.url,
      maxContexts: required(config, "SCRAPER_MAX_CONTEXTS"),
      contextIdleMs: required(config, "SCRAPER_CONTEXT_IDLE_MS"),
      pagesPerContext: hostCap,
      logger,
    });
    const checker = createChecker({ browser, proxy, policy, timeoutMs });
    const feed = createMonitorFeed(nats, prefix, logger);
    const settings: ScheduleSettings = {
      minIntervalSeconds: required(config, "SCRAPER_MIN_INTERVAL_SECONDS"),
      defaultIntervalSeconds: required(config, "SCRAPER_DEFAULT_INTERVAL_SECONDS"),
      errorAfterFailures: required(config, "SCRAPER_ERROR_AFTER_FAILURES"),
      maxBackoffSeconds: required(config, "SCRAPER_MAX_BACKOFF_SECONDS"),
    };
    const scheduler = startScheduler({
      sql,
      checker,
      feed,
      logger,
      replica: `${hostname()}-${process.pid}`,
      settings,
      concurrency: { BROWSER: required(config, "SCRAPER_BROWSER_CONCURRENCY"), HTTP: required(config, "SCRAPER_HTTP_CONCURRENCY") },
      hostCap,
      hostGapMs: required(config, "SCRAPER_HOST_GAP_MS"),
      pollMs: required(config, "SCRAPER_POLL_MS"),
      sweepMs: required(config, "SCRAPER_SWEEP_INTERVAL_MS"),
      checkTimeoutMs: timeoutMs,
    });
    registerMonitorGauges(sql);
    const notifier = createNotifierGateway(required(config, "NOTIFIER_ADDR"), required(config, "SCRAPER_NOTIFIER_TIMEOUT_MS"), logger);
    const stopping = new AbortController();

    // Watch streams end at once (clients reconnect to another replica), so the gRPC server can close.
    shutdown.on("not-serving", "watches", () => stopping.abort());
    // Checks in flight get part of the shutdown budget; the rest give their leases back for another replica.
    shutdown.on("finish-in-flight", "scheduler", () => scheduler.stop(Math.min(10_000, required(config, "SHUTDOWN_TIMEOUT_MS") / 2)));
    shutdown.on("drain-nats", "relay", () => relay.stop());
    shutdown.on("drain-nats", "browser", () => browser.close());
    shutdown.on("drain-nats", "proxy", () => proxy.stop());
    shutdown.on("drain-nats", "feed", () => feed.close());
    shutdown.on("drain-nats", "notifier", () => notifier.close());

    return {
      grpc: [monitorService({ sql, scheduler, feed, notifier, browser, policy, settings, logger, stopping: stopping.signal })],
    };
  },
});
