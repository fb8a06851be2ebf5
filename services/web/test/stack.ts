/**
 * The services the dashboard's tests run against: real processes on loopback with their own
 * database and NATS prefix, and the web dashboard pointed at them.
 */
import {
  createTestDatabase,
  removeNatsPrefix,
  startServiceProcess,
  stopOrKill,
  testNatsPrefix,
  type ServiceProcess,
  type TestDatabase,
} from "@coursemesh/shared/testing/harness.ts";

export const WEB_SESSION_SECRET = "web-test-session-secret-0123456789abcdef";
/** An address nothing listens on: a backend a test does not start. */
const NOWHERE = "127.0.0.1:9";

type Backend = "scraper" | "allocator" | "notifier" | "ingest";

export interface Stack {
  web: ServiceProcess;
  services: Partial<Record<Backend, ServiceProcess>>;
  stop(): Promise<void>;
}

export interface StackOptions {
  backends: Backend[];
  /** Extra environment per service. */
  env?: Partial<Record<Backend | "web", Record<string, string>>>;
}

/** Starts the chosen backends (the notifier first: the scraper calls it), then the web dashboard. */
export async function startStack(options: StackOptions): Promise<Stack> {
  const database: TestDatabase = await createTestDatabase();
  const prefix = testNatsPrefix();
  const common = { DATABASE_URL: database.url, NATS_PREFIX: prefix, LOG_LEVEL: "info" };
  const services: Partial<Record<Backend, ServiceProcess>> = {};
  const start = (service: Backend, env: Record<string, string> = {}) =>
    startServiceProcess(service, { env: { ...common, ...env, ...options.env?.[service] }, timeoutMs: 60_000 }).then((process) => {
      services[service] = process;
    });
  const stopAll = async () => {
    await Promise.all(Object.values(services).map((service) => stopOrKill(service)));
    await removeNatsPrefix(prefix);
    await database.drop();
  };
  try {
    if (options.backends.includes("notifier")) await start("notifier");
    await Promise.all(
      options.backends
        .filter((b) => b !== "notifier")
        .map((b) =>
          start(
            b,
            b === "scraper"
              ? { NOTIFIER_ADDR: services.notifier?.grpcAddress ?? NOWHERE }
              : b === "ingest"
                ? { INGEST_DOCUMENTS_MAX_BYTES: String(64 * 1024 * 1024), INGEST_SWEEP_INTERVAL_MS: "3600000" }
                : {},
          ),
        ),
    );
    const web = await startServiceProcess("web", {
      env: {
        LOG_LEVEL: "info",
        WEB_SESSION_SECRET,
        SCRAPER_ADDR: services.scraper?.grpcAddress ?? NOWHERE,
        ALLOCATOR_ADDR: services.allocator?.grpcAddress ?? NOWHERE,
        NOTIFIER_ADDR: services.notifier?.grpcAddress ?? NOWHERE,
        INGEST_ADDR: services.ingest?.grpcAddress ?? NOWHERE,
        ...options.env?.web,
      },
    });
    return {
      web,
      services,
      async stop() {
        await stopOrKill(web);
        await stopAll();
      },
    };
  } catch (error) {
    await stopAll().catch(() => {});
    throw error;
  }
}
