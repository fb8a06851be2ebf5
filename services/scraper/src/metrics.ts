/**
 * The scraper's scrape-time gauges: read from Postgres when Prometheus scrapes, so every replica
 * reports the same totals rather than its own share.
 */
import { Gauge } from "prom-client";
import type { Sql } from "@coursemesh/shared/db.ts";
import { registry } from "@coursemesh/shared/metrics.ts";
import type { Health, Mode } from "./monitors.ts";
import { countMonitorsByModeAndHealth } from "./store.ts";

const MODES: Mode[] = ["ACTIVE", "PAUSED", "STOPPED"];
const HEALTHS: Health[] = ["PENDING", "HEALTHY", "STALE", "ERROR"];

/** Registers coursemesh_scraper_monitors{mode,health}. */
export function registerMonitorGauges(sql: Sql): void {
  new Gauge({
    name: "coursemesh_scraper_monitors",
    help: "Monitors by mode and health, across all replicas (read from Postgres at scrape time).",
    labelNames: ["mode", "health"] as const,
    registers: [registry],
    async collect() {
      try {
        const counts = await countMonitorsByModeAndHealth(sql);
        // Every combination is set, so a count that drops to zero shows 0 rather than its last value.
        for (const mode of MODES) {
          for (const health of HEALTHS) this.set({ mode, health }, counts.find((c) => c.mode === mode && c.health === health)?.n ?? 0);
        }
      } catch {
        // The database is unreachable: /readyz says so; the scrape still succeeds with the last values.
      }
    },
  });
}
