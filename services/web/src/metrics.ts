/** The dashboard's own series on /metrics, next to the process metrics. */
import { Counter, Gauge } from "prom-client";
import { registry } from "@coursemesh/shared/metrics.ts";

/** Requests answered, by route pattern (never a raw path: ids would explode the series). */
export const webRequests = new Counter({
  name: "web_http_requests_total",
  help: "Dashboard requests answered, by method, route and HTTP status.",
  labelNames: ["method", "route", "status"] as const,
  registers: [registry],
});

/** Live (server-sent event) streams open now, read at scrape time. */
export function registerLiveStreamGauge(count: () => number): void {
  new Gauge({
    name: "web_live_streams",
    help: "Server-sent event streams open to browsers.",
    registers: [registry],
    collect() {
      this.set(count());
    },
  });
}
