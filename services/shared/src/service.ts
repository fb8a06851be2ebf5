import type { Authenticator } from "./auth.ts";
import { createAuthenticator } from "./auth.ts";
import { ConfigError, loadConfig, type Config, type ProcessName, type ServiceName } from "./config.ts";
import { createSql, migrate, pingDatabase, PLATFORM_MIGRATIONS, type Sql } from "./db.ts";
import { startGrpcServer, type RunningGrpcServer, type ServiceRegistration } from "./grpc/server.ts";
import { startOpsServer, type OpsServer, type ReadinessCheck } from "./http.ts";
import { createLogger, type Logger } from "./logger.ts";
import { initMetrics } from "./metrics.ts";
import { connectNats, pingNats, type NatsConnection } from "./nats.ts";
import { createShutdown, exitOnSignals, type Shutdown } from "./shutdown.ts";
import { shutdownTelemetry, startTelemetry } from "./telemetry.ts";

/** What every process's wiring gets. */
export interface BaseDeps {
  config: Config;
  logger: Logger;
  authenticator: Authenticator;
  shutdown: Shutdown;
}

/** What a backend service's wiring gets to build its handlers and workers from. */
export interface ServiceDeps extends BaseDeps {
  sql: Sql;
  nats: NatsConnection;
}

export interface ServiceDefinition {
  service: ServiceName;
  /** Folder of forward-only SQL migrations for the service's schema. */
  migrationsDir: string;
  /** Builds the gRPC services and starts background work (register its stop steps on `deps.shutdown`). */
  setup(deps: ServiceDeps): Promise<{
    grpc: ServiceRegistration[];
    checks?: ReadinessCheck[];
    handleHttp?: (request: Request) => Promise<Response | undefined> | Response | undefined;
    maxRequestBodySize?: number;
  }>;
}

export interface RunningService extends ServiceDeps {
  grpc: RunningGrpcServer;
  http: OpsServer;
}

/**
 * A process that only serves HTTP (the web dashboard): no database, NATS or gRPC server of its own.
 * Its HTTP port carries /healthz, /readyz and /metrics next to its own routes.
 */
export interface HttpServiceDefinition {
  service: ProcessName;
  httpOnly: true;
  /** Builds the routes; register stop steps (e.g. ending long-lived streams at "stop-intake") on `deps.shutdown`. */
  setup(deps: BaseDeps): Promise<{
    handleHttp: (request: Request) => Promise<Response | undefined> | Response | undefined;
    checks?: ReadinessCheck[];
    maxRequestBodySize?: number;
    /** Seconds an idle connection stays open (long-lived streams send heartbeats inside it). */
    idleTimeoutSeconds?: number;
  }>;
}

export interface RunningHttpService extends BaseDeps {
  http: OpsServer;
}

/** Validated configuration (or exit 78 with every problem listed) and the logger. */
function bootstrap(service: ProcessName): { config: Config; logger: Logger } {
  let config: Config;
  try {
    config = loadConfig(service);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    // A bad deployment should say what to fix, not print a stack trace.
    console.error(error.message);
    process.exit(78);
  }
  const logger = createLogger(service, config.LOG_LEVEL!);
  return { config, logger };
}

/** Telemetry, metrics and the ordered shutdown on SIGTERM/SIGINT: what every process starts with. */
function startProcessPlatform(service: ProcessName, config: Config, logger: Logger): Shutdown {
  startTelemetry(service);
  initMetrics(service);
  if (config.AUTH_DISABLED) logger.warn("AUTH_DISABLED=true: every call is trusted; for local development only");
  const shutdown = createShutdown(logger, config.SHUTDOWN_TIMEOUT_MS!);
  exitOnSignals(shutdown);
  return shutdown;
}

/**
 * One entry point for an HTTP-only process: config → telemetry → HTTP → ready. On SIGTERM /readyz
 * fails first, the definition's stop steps end long-lived streams, in-flight requests finish, then
 * telemetry is flushed.
 */
export async function runHttpService(definition: HttpServiceDefinition): Promise<RunningHttpService> {
  const { config, logger } = bootstrap(definition.service);
  const shutdown = startProcessPlatform(definition.service, config, logger);
  const authenticator = createAuthenticator(config);
  const deps: BaseDeps = { config, logger, authenticator, shutdown };
  const built = await definition.setup(deps);
  const http = startOpsServer({
    host: config.BIND_HOST!,
    port: config.HTTP_PORT!,
    checks: built.checks ?? [],
    handle: built.handleHttp,
    maxRequestBodySize: built.maxRequestBodySize,
    idleTimeoutSeconds: built.idleTimeoutSeconds,
  });
  shutdown.on("not-serving", "health", () => http.setReady(false));
  shutdown.on("finish-in-flight", "http", () => http.stop({ graceful: true }));
  shutdown.on("flush-telemetry", "otel", () => shutdownTelemetry());
  logger.info({ httpPort: http.port }, `${definition.service} ready`);
  return { ...deps, http };
}

/**
 * One entry point per process: config → telemetry → db (migrated) / NATS → gRPC + HTTP → ready.
 * `--migrate-only` applies the migrations and exits (the Kubernetes migration Job).
 */
export async function runService(definition: ServiceDefinition, argv: string[] = process.argv): Promise<RunningService | undefined> {
  const { config, logger } = bootstrap(definition.service);
  const sql = createSql({ url: config.DATABASE_URL!, schema: definition.service, max: config.DATABASE_POOL_MAX });
  const migrations = [PLATFORM_MIGRATIONS, { name: definition.service, dir: definition.migrationsDir }];
  if (argv.includes("--migrate-only")) {
    const applied = await migrate(sql, definition.service, migrations);
    logger.info({ applied }, "migrations applied");
    await sql.end();
    return undefined;
  }

  const shutdown = startProcessPlatform(definition.service, config, logger);

  const applied = await migrate(sql, definition.service, migrations);
  if (applied.length) logger.info({ applied }, "migrations applied");
  const nats = await connectNats(config.NATS_URL!, `coursemesh-${definition.service}`, logger);
  const authenticator = createAuthenticator(config);
  const deps: ServiceDeps = { config, logger, sql, nats, authenticator, shutdown };

  const built = await definition.setup(deps);
  const grpc = await startGrpcServer({
    service: definition.service,
    host: config.BIND_HOST!,
    port: config.GRPC_PORT!,
    services: built.grpc,
    authenticator,
    logger,
  });
  const http = startOpsServer({
    host: config.BIND_HOST!,
    port: config.HTTP_PORT!,
    checks: [
      { name: "postgres", check: () => pingDatabase(sql) },
      { name: "nats", check: () => pingNats(nats) },
      ...(built.checks ?? []),
    ],
    handle: built.handleHttp,
    maxRequestBodySize: built.maxRequestBodySize,
  });

  shutdown.on("not-serving", "health", () => {
    grpc.setServing("NOT_SERVING");
    http.setReady(false);
  });
  shutdown.on("stop-intake", "grpc", () => grpc.shutdown(Math.max(0, config.SHUTDOWN_TIMEOUT_MS! - 2000)));
  shutdown.on("drain-nats", "nats", () => nats.drain());
  shutdown.on("close-db", "postgres", () => sql.end({ timeout: 5 }));
  shutdown.on("close-db", "http", () => http.stop());
  shutdown.on("flush-telemetry", "otel", () => shutdownTelemetry());

  grpc.setServing("SERVING");
  logger.info({ grpcPort: grpc.port, httpPort: http.port }, `${definition.service} ready`);
  return { ...deps, grpc, http };
}
