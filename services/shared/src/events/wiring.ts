/**
 * What every service's main.ts does with events, done one way: provision its streams with
 * EVENTS_STREAM_REPLICAS, start its outbox relay with the OUTBOX_RELAY_* settings, and export its
 * durable consumers' pending and redelivered counts on /metrics (read from JetStream at scrape time).
 */
import { jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { Gauge } from "prom-client";
import { required, type Config } from "../config.ts";
import type { Sql } from "../db.ts";
import type { Logger } from "../logger.ts";
import { registry } from "../metrics.ts";
import { startRelay, type Relay, type RelayOptions } from "./relay.ts";
import { consumerName, provisionStreams, streamName, type StreamName } from "./streams.ts";

export interface ServiceEventsOptions {
  config: Config;
  sql: Sql;
  nats: NatsConnection;
  logger: Logger;
  service: string;
  /** Streams the service writes to or reads from. */
  streams: StreamName[];
  /** The service's durable consumers, for the pending/redelivered gauges. */
  consumers?: { stream: StreamName; durable: string }[];
  /** Relay options beyond the shared settings (benchmarks, tests). */
  relay?: Partial<Pick<RelayOptions, "batchSize" | "deleteBatchSize" | "publishTimeoutMs" | "notifyDebounceMs" | "onPublished">>;
}

/** Provisions the service's streams and starts its outbox relay, both from the shared settings. */
export async function startServiceEvents(options: ServiceEventsOptions): Promise<Relay> {
  const { config, sql, nats, logger, service } = options;
  const prefix = config.NATS_PREFIX ?? "";
  const jsm = await jetstreamManager(nats);
  await provisionStreams(jsm, prefix, options.streams, {
    replicas: config.EVENTS_STREAM_REPLICAS,
    maxBytes: config.EVENTS_STREAM_MAX_BYTES,
  });
  for (const consumer of options.consumers ?? []) consumersToMeasure.set(consumerName(prefix, consumer.durable), { jsm, stream: streamName(prefix, consumer.stream) });
  return startRelay({
    sql,
    natsServers: required(config, "NATS_URL"),
    service,
    prefix,
    logger,
    pollIntervalMs: config.OUTBOX_RELAY_POLL_INTERVAL_MS,
    standbyRetryMs: config.OUTBOX_RELAY_STANDBY_RETRY_MS,
    maxInFlight: config.OUTBOX_RELAY_MAX_IN_FLIGHT,
    ...options.relay,
  });
}

const consumersToMeasure = new Map<string, { jsm: JetStreamManager; stream: string }>();

/** Each durable consumer's counts as JetStream reports them; one a consumer that does not exist yet is left out. */
async function readConsumers(): Promise<Map<string, { pending: number; ackPending: number; redelivered: number }>> {
  const read = new Map<string, { pending: number; ackPending: number; redelivered: number }>();
  await Promise.all(
    [...consumersToMeasure].map(async ([consumer, { jsm, stream }]) => {
      try {
        const info = await jsm.consumers.info(stream, consumer);
        read.set(consumer, { pending: info.num_pending, ackPending: info.num_ack_pending, redelivered: info.num_redelivered });
      } catch {
        // Not created yet, or NATS is unreachable (readiness reports that): no sample this scrape.
      }
    }),
  );
  return read;
}

new Gauge({
  name: "coursemesh_consumer_pending",
  help: "Messages a durable consumer has yet to be delivered (state=undelivered) or to acknowledge (state=unacked), from JetStream at scrape time.",
  labelNames: ["consumer", "state"] as const,
  registers: [registry],
  async collect() {
    for (const [consumer, counts] of await readConsumers()) {
      this.set({ consumer, state: "undelivered" }, counts.pending);
      this.set({ consumer, state: "unacked" }, counts.ackPending);
    }
  },
});

new Gauge({
  name: "coursemesh_consumer_redelivered",
  help: "Messages of a durable consumer delivered more than once and not yet acknowledged, from JetStream at scrape time.",
  labelNames: ["consumer"] as const,
  registers: [registry],
  async collect() {
    for (const [consumer, counts] of await readConsumers()) this.set({ consumer }, counts.redelivered);
  },
});
