/**
 * "A monitor changed" across replicas, for WatchMonitors: after each commit that touches a monitor
 * the writer publishes its id on core NATS (`<prefix>.scraper.monitor.<id>`); every replica holds one
 * subscription and fans the ids out to its watch streams, which re-read the row. A message lost at a
 * crash between commit and publish only delays an update until the watchers' safety poll.
 */
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Logger } from "@coursemesh/shared/logger.ts";

/** What a watch stream is told: which monitor, and the seat change that caused it, if any. */
export interface MonitorTouched {
  id: string;
  changeId?: string;
}

export interface MonitorFeed {
  /** Announces a committed change of a monitor to every replica's watchers. */
  touched(update: MonitorTouched): void;
  /** Listens to every replica's announcements; returns the unsubscribe. */
  listen(listener: (update: MonitorTouched) => void): () => void;
  close(): Promise<void>;
}

/** The feed on `nats` under the deployment's NATS_PREFIX. */
export function createMonitorFeed(nats: NatsConnection, prefix: string, logger: Logger): MonitorFeed {
  const base = prefix ? `${prefix}.scraper.monitor` : "scraper.monitor";
  const listeners = new Set<(update: MonitorTouched) => void>();
  let subscription: Subscription | undefined;

  const ensureSubscribed = () => {
    if (subscription) return;
    const sub = nats.subscribe(`${base}.*`);
    subscription = sub;
    void (async () => {
      for await (const message of sub) {
        let update: MonitorTouched;
        try {
          update = message.json<MonitorTouched>();
        } catch {
          continue;
        }
        for (const listener of listeners) listener(update);
      }
    })();
  };

  return {
    touched(update) {
      try {
        nats.publish(`${base}.${update.id}`, JSON.stringify(update));
      } catch (error) {
        // A closed connection (shutdown) only costs watchers latency; their poll catches up.
        logger.debug({ err: error, monitorId: update.id }, "could not announce a monitor update");
      }
    },
    listen(listener) {
      ensureSubscribed();
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    async close() {
      subscription?.unsubscribe();
      subscription = undefined;
      listeners.clear();
    },
  };
}
