import { connect, type NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "./logger.ts";

export type { NatsConnection };

/** Connects to NATS and keeps reconnecting forever; outages are logged, not fatal. */
export async function connectNats(servers: string[], name: string, logger: Logger): Promise<NatsConnection> {
  const nc = await connect({
    servers,
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    waitOnFirstConnect: true,
    pingInterval: 20_000,
  });
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === "disconnect" || status.type === "error") logger.warn({ nats: status }, "NATS connection trouble");
      else if (status.type === "reconnect") logger.info({ nats: status }, "NATS reconnected");
    }
  })();
  return nc;
}

/** Readiness check: a round trip to the NATS server. */
export async function pingNats(nc: NatsConnection): Promise<void> {
  if (nc.isClosed()) throw new Error("NATS connection is closed");
  await nc.flush();
}
