import { collectDefaultMetrics, Counter, Histogram, Registry } from "prom-client";

/** One Prometheus registry per process, served at /metrics. */
export const registry = new Registry();
let defaultsCollected = false;

/** Registers process metrics once and labels every series with the service. */
export function initMetrics(service: string): Registry {
  if (!defaultsCollected) {
    defaultsCollected = true;
    registry.setDefaultLabels({ service });
    collectDefaultMetrics({ register: registry });
  }
  return registry;
}

type HandledLabels = Record<"grpc_service" | "grpc_method" | "grpc_type" | "grpc_code", string>;
/** Calls counted per series since grpc_server_handled_total was last read. */
const handledPending: { labels: HandledLabels; count: number }[] = [];

/** Finished gRPC calls by service, method and status code (go-grpc-prometheus names). */
export const grpcServerHandled = new Counter({
  name: "grpc_server_handled_total",
  help: "gRPC calls completed on the server, by method and status code.",
  labelNames: ["grpc_service", "grpc_method", "grpc_type", "grpc_code"] as const,
  registers: [registry],
  // Whoever reads the counter (a scrape, registry.metrics(), get()) first gets the calls counted since.
  collect() {
    for (const series of handledPending) {
      if (series.count === 0) continue;
      this.inc(series.labels, series.count);
      series.count = 0;
    }
  },
});

/**
 * One series of grpc_server_handled_total for the per-call path: inc() only adds to a number, and
 * the counter takes the sum when it is read, instead of prom-client validating and hashing the
 * labels on every call.
 */
export function grpcServerHandledSeries(labels: HandledLabels): { inc(): void } {
  const series = { labels, count: 0 };
  handledPending.push(series);
  return {
    inc() {
      series.count += 1;
    },
  };
}

/** gRPC handling time (for streams: until the stream ends). */
export const grpcServerHandlingSeconds = new Histogram({
  name: "grpc_server_handling_seconds",
  help: "Time to handle a gRPC call on the server, by method.",
  labelNames: ["grpc_service", "grpc_method", "grpc_type"] as const,
  buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  registers: [registry],
});
