/**
 * What the scraper's tests share: a database and NATS prefix of the file's own, the demo registrar
 * on loopback, scraper processes started the way Kubernetes starts them, a gRPC client, and a core
 * NATS subscription that collects the SEATS events as any subscriber would see them.
 */
import * as grpc from "@grpc/grpc-js";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { MonitorServiceClient, type WatchMonitorsResponse } from "@coursemesh/proto/coursemesh/scraper/v1/scraper";
import { deleteStreams } from "@coursemesh/shared/events/index.ts";
import { bearer, unary } from "@coursemesh/shared/grpc/client.ts";
import { createTestDatabase, startServiceProcess, stopOrKill, TEST_NATS_URL, testNatsPrefix, type ServiceProcess, type TestDatabase } from "@coursemesh/shared/testing/harness.ts";
import { startRegistrar, type Registrar, type RegistrarOptions } from "../src/demo/registrar.ts";
import { eventually } from "@coursemesh/shared/testing/eventually.ts";
export { eventually };

export interface ScraperEnv {
  db: TestDatabase;
  prefix: string;
  registrar: Registrar;
  nats: NatsConnection;
  env: Record<string, string>;
  /** Starts one more scraper process with the file's database and prefix (plus `extra` env). */
  startScraper(extra?: Record<string, string>): Promise<ServiceProcess>;
  /** Events received on `<prefix>.seats.>` so far: subject and parsed JSON payload. */
  events: { subject: string; data: Record<string, any>; headers: Record<string, string> }[];
  /** Resolves with the first event matching `match` (already received or arriving within `timeoutMs`). */
  waitForEvent(match: (e: { subject: string; data: Record<string, any> }) => boolean, timeoutMs?: number): Promise<{ subject: string; data: Record<string, any>; headers: Record<string, string> }>;
  close(): Promise<void>;
}

/** Settings that keep tests quick: short intervals and timeouts, fast polls; loopback allowed. */
export const FAST_SCRAPER_ENV: Record<string, string> = {
  SCRAPER_ALLOW_PRIVATE_HOSTS: "true",
  SCRAPER_MIN_INTERVAL_SECONDS: "1",
  SCRAPER_CHECK_TIMEOUT_MS: "4000",
  SCRAPER_POLL_MS: "100",
  SCRAPER_SWEEP_INTERVAL_MS: "300",
  SCRAPER_HOST_GAP_MS: "0",
  SCRAPER_HOST_CONCURRENCY: "4",
  // No notifier in most tests: a port nothing listens on (monitors without notify_emails never call it).
  NOTIFIER_ADDR: "127.0.0.1:9",
  LOG_LEVEL: "info",
};

/** Sets up a file's scraper world. */
export async function scraperEnv(options: { env?: Record<string, string>; registrar?: RegistrarOptions } = {}): Promise<ScraperEnv> {
  const db = await createTestDatabase();
  const prefix = testNatsPrefix();
  const registrar = startRegistrar({ renderDelayMs: 200, ...options.registrar });
  const nats = await connect({ servers: TEST_NATS_URL });
  const events: ScraperEnv["events"] = [];
  const waiters = new Set<() => void>();
  const sub = nats.subscribe(`${prefix}.seats.>`);
  void (async () => {
    for await (const message of sub) {
      const headers: Record<string, string> = {};
      for (const key of message.headers?.keys() ?? []) headers[key] = message.headers!.get(key);
      events.push({ subject: message.subject.slice(prefix.length + 1), data: message.json(), headers });
      for (const waiter of waiters) waiter();
    }
  })();
  const env = { DATABASE_URL: db.url, NATS_PREFIX: prefix, ...FAST_SCRAPER_ENV, ...options.env };
  const processes: ServiceProcess[] = [];
  return {
    db,
    prefix,
    registrar,
    nats,
    env,
    events,
    async startScraper(extra = {}) {
      const scraper = await startServiceProcess("scraper", { env: { ...env, ...extra }, timeoutMs: 60_000 });
      processes.push(scraper);
      return scraper;
    },
    waitForEvent(match, timeoutMs = 15_000) {
      return new Promise((resolve, reject) => {
        const look = () => {
          const found = events.find(match);
          if (found) {
            waiters.delete(look);
            clearTimeout(timer);
            resolve(found);
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(look);
          reject(new Error(`no matching event within ${timeoutMs} ms; received: ${JSON.stringify(events.map((e) => [e.subject, e.data.current ?? e.data.health]))}`));
        }, timeoutMs);
        waiters.add(look);
        look();
      });
    },
    async close() {
      // A graceful stop closes Chromium and removes its temporary profile.
      await Promise.all(processes.filter((p) => p.process.exitCode === null).map((p) => stopOrKill(p)));
      sub.unsubscribe();
      await deleteStreams(await jetstreamManager(nats), prefix).catch(() => {});
      await nats.close();
      await registrar.stop();
      await db.drop();
    },
  };
}

/** A MonitorService client for a scraper process. */
export function monitorClient(address: string): MonitorServiceClient {
  return new MonitorServiceClient(address, grpc.credentials.createInsecure());
}

type Unary<Q, R> = (request: Q, metadata: grpc.Metadata, options: Partial<grpc.CallOptions>, callback: (error: grpc.ServiceError | null, response: R) => void) => grpc.ClientUnaryCall;

/** Calls a unary method with a bearer token: `await call(client, "getMonitor", { id }, token)`. */
export function call<K extends keyof MonitorServiceClient>(
  client: MonitorServiceClient,
  method: K,
  request: MonitorServiceClient[K] extends Unary<infer Q, any> ? Q : never,
  token?: string,
  deadlineMs = 30_000,
): Promise<MonitorServiceClient[K] extends Unary<any, infer R> ? R : never> {
  const fn = (client[method] as Function).bind(client);
  return unary(fn, request, { token, deadlineMs }) as never;
}

/** A WatchMonitors stream whose messages collect in `received` until `cancel()`. */
export function watchStream(client: MonitorServiceClient, ids: string[], token: string) {
  const received: WatchMonitorsResponse[] = [];
  const stream = client.watchMonitors({ ids }, bearer(token));
  stream.on("data", (message: WatchMonitorsResponse) => received.push(message));
  stream.on("error", () => {});
  return { received, cancel: () => stream.cancel() };
}

/** A BearTracks extractor for the demo's sample data. */
export function beartracks(courseCode = "CMPUT 201", sectionLabel = "LEC A1") {
  return { kind: { $case: "beartracks" as const, value: { courseCode, sectionLabel } } };
}
