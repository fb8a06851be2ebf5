/**
 * The configuration registry: every environment variable coursemesh reads, with its type, default
 * and the services that read it. Start-up validates it; the Kubernetes tests check manifests
 * against it, so a variable that is not declared here is one no service reads.
 */

/** The backend services: each serves gRPC and owns a Postgres schema and its JetStream streams. */
export const SERVICE_NAMES = ["scraper", "allocator", "notifier", "ingest"] as const;
export type ServiceName = (typeof SERVICE_NAMES)[number];
/** Every process coursemesh runs: the backends and `web`, the dashboard (HTTP only: no gRPC, database or NATS). */
export const PROCESS_NAMES = [...SERVICE_NAMES, "web"] as const;
export type ProcessName = (typeof PROCESS_NAMES)[number];

/** Local ports of each service (DESIGN.md §Configuration); the dashboard has no gRPC port. */
export const SERVICE_PORTS: Record<ServiceName, { grpc: number; http: number }> & Record<"web", { grpc?: undefined; http: number }> = {
  scraper: { grpc: 50051, http: 8081 },
  allocator: { grpc: 50052, http: 8082 },
  notifier: { grpc: 50053, http: 8083 },
  ingest: { grpc: 50054, http: 8084 },
  web: { http: 8080 },
};

/** `"all"` is every process, the dashboard included; `SERVICE_NAMES` is the backends only. */
type Readers = readonly ProcessName[] | "all";

interface VarSpec<T> {
  /** What it is for, in a sentence an operator can act on. */
  description: string;
  readers: Readers;
  /** Default for a reader; `undefined` means the variable is optional and has no value. */
  default: (service: ProcessName) => string | undefined;
  parse: (raw: string) => T;
  /** Secrets come from a Secret in Kubernetes, never a ConfigMap. */
  secret?: boolean;
  /** Read by a library (the OpenTelemetry SDK) rather than by our own code. */
  readByLibrary?: boolean;
  /** Start-up fails when a reader has no value (no default, not set). */
  required?: boolean;
}

class ConfigError extends Error {
  override name = "ConfigError";
}

function fail(message: string): never {
  throw new ConfigError(message);
}

const parsers = {
  string: (raw: string) => raw,
  nonEmpty: (raw: string) => (raw.trim() === "" ? fail("must not be empty") : raw),
  int:
    (min: number, max: number) =>
    (raw: string): number => {
      if (!/^-?\d+$/.test(raw.trim())) fail(`must be a whole number, got "${raw}"`);
      const value = Number(raw);
      if (value < min || value > max) fail(`must be between ${min} and ${max}, got ${value}`);
      return value;
    },
  bool: (raw: string): boolean => {
    const value = raw.trim().toLowerCase();
    if (["true", "1", "yes"].includes(value)) return true;
    if (["false", "0", "no", ""].includes(value)) return false;
    return fail(`must be true or false, got "${raw}"`);
  },
  url:
    (...protocols: string[]) =>
    (raw: string): string => {
      let url: URL;
      try {
        url = new URL(raw);
      } catch {
        return fail(`must be a URL, got "${raw}"`);
      }
      if (!protocols.includes(url.protocol)) {
        fail(`must be a ${protocols.map((p) => p.replace(":", "://")).join(" or ")} URL, got "${url.protocol}//…"`);
      }
      return raw;
    },
  hostPort: (raw: string): string => {
    if (!/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(raw.trim())) fail(`must be host:port, got "${raw}"`);
    return raw.trim();
  },
  oneOf:
    <const T extends string>(...values: T[]) =>
    (raw: string): T =>
      (values as string[]).includes(raw) ? (raw as T) : fail(`must be one of ${values.join(", ")}, got "${raw}"`),
};

const fixed = (value: string | undefined) => () => value;
const servicePort = (kind: "grpc" | "http") => (service: ProcessName) => {
  const port = SERVICE_PORTS[service][kind];
  return port === undefined ? undefined : String(port);
};

function defineVar<T>(spec: VarSpec<T>): VarSpec<T> {
  return spec;
}

function otelVar(description: string) {
  return defineVar({ description, readers: "all", default: fixed(undefined), parse: parsers.string, readByLibrary: true });
}

/** Declares `<SERVICE>_ADDR` for the services that call `target`. */
export function serviceAddress(target: ServiceName, readers: readonly ProcessName[]) {
  const { grpc } = SERVICE_PORTS[target];
  return defineVar({
    description: `gRPC address (host:port) of the ${target} service.`,
    readers,
    default: fixed(`127.0.0.1:${grpc}`),
    parse: parsers.hostPort,
  });
}

/** Every variable coursemesh reads. Add new ones here, with the services that read them. */
export const CONFIG_REGISTRY = {
  DATABASE_URL: defineVar({
    description: "PostgreSQL connection URL; each service uses its own schema in this database.",
    readers: SERVICE_NAMES,
    default: fixed("postgres://postgres@127.0.0.1:5432/coursemesh"),
    parse: parsers.url("postgres:", "postgresql:"),
    secret: true,
  }),
  DATABASE_POOL_MAX: defineVar({
    description: "Connections in the process's Postgres pool.",
    readers: SERVICE_NAMES,
    default: fixed("10"),
    parse: parsers.int(1, 200),
  }),
  NATS_URL: defineVar({
    description: "NATS server URL(s), comma-separated; JetStream must be enabled.",
    readers: SERVICE_NAMES,
    default: fixed("nats://127.0.0.1:4222"),
    parse: (raw: string) => raw.split(",").map((u) => parsers.url("nats:", "tls:", "ws:", "wss:")(u.trim())),
  }),
  NATS_PREFIX: defineVar({
    description:
      "Prefix for every JetStream stream, consumer and subject, so several deployments (or test runs) share one NATS; empty in production.",
    readers: SERVICE_NAMES,
    default: fixed(""),
    parse: (raw: string) =>
      raw === "" || /^[a-z][a-z0-9_]{0,30}$/.test(raw) ? raw : fail(`must be lowercase letters, digits and _, got "${raw}"`),
  }),
  BIND_HOST: defineVar({
    description: "Interface the gRPC and HTTP servers listen on.",
    readers: "all",
    default: fixed("0.0.0.0"),
    parse: parsers.nonEmpty,
  }),
  GRPC_PORT: defineVar({
    description: "gRPC port (0 picks a free one).",
    readers: SERVICE_NAMES,
    default: servicePort("grpc"),
    parse: parsers.int(0, 65535),
  }),
  HTTP_PORT: defineVar({
    description: "HTTP port for /healthz, /readyz and /metrics, and the web dashboard's pages (0 picks a free one).",
    readers: "all",
    default: servicePort("http"),
    parse: parsers.int(0, 65535),
  }),
  LOG_LEVEL: defineVar({
    description: "Minimum log level.",
    readers: "all",
    default: fixed("info"),
    parse: parsers.oneOf("trace", "debug", "info", "warn", "error", "fatal", "silent"),
  }),
  SHUTDOWN_TIMEOUT_MS: defineVar({
    description: "How long SIGTERM waits for in-flight work before the process exits anyway.",
    readers: "all",
    default: fixed("20000"),
    parse: parsers.int(0, 600_000),
  }),
  AUTH_JWT_SECRET: defineVar({
    description: "HS256 secret for bearer tokens (at least 32 characters).",
    readers: "all",
    default: fixed(undefined),
    parse: (raw: string) => (raw.length < 32 ? fail("must be at least 32 characters") : raw),
    secret: true,
  }),
  AUTH_JWKS_URL: defineVar({
    description: "JWKS URL for RS256 bearer tokens from an identity provider.",
    readers: "all",
    default: fixed(undefined),
    parse: parsers.url("https:", "http:"),
  }),
  AUTH_ISSUER: defineVar({
    description: "Expected `iss` of bearer tokens, when set.",
    readers: "all",
    default: fixed(undefined),
    parse: parsers.nonEmpty,
  }),
  AUTH_AUDIENCE: defineVar({
    description: "Expected `aud` of bearer tokens, when set.",
    readers: "all",
    default: fixed(undefined),
    parse: parsers.nonEmpty,
  }),
  AUTH_DISABLED: defineVar({
    description: "Local development only: every call acts as an operator. Never set in a deployment.",
    readers: SERVICE_NAMES,
    default: fixed("false"),
    parse: parsers.bool,
  }),
  OTEL_SERVICE_NAME: otelVar("Service name on traces (defaults to the coursemesh service's name)."),
  OTEL_EXPORTER_OTLP_ENDPOINT: otelVar("OTLP collector base URL; tracing is off when no endpoint is set."),
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: otelVar("OTLP traces URL, overriding the base endpoint."),
  OTEL_EXPORTER_OTLP_PROTOCOL: otelVar("OTLP protocol: http/protobuf (default), http/json or grpc."),
  OTEL_EXPORTER_OTLP_HEADERS: otelVar("Headers sent to the collector (key=value,…)."),
  OTEL_TRACES_SAMPLER: otelVar("Sampler; parentbased_traceidratio when unset (a caller's sampling decision is followed)."),
  OTEL_TRACES_SAMPLER_ARG: otelVar("Sampler argument: the ratio of new traces kept, 1.0 when unset (production overlays use 0.1)."),
  OTEL_RESOURCE_ATTRIBUTES: otelVar("Extra resource attributes (key=value,…)."),
  OTEL_SDK_DISABLED: otelVar("true turns tracing off."),
  NOTIFIER_SMTP_URL: defineVar({
    description:
      "SMTP server the notifier sends email through: smtp://user:pass@host:587 (STARTTLS when offered) or smtps://…:465 (TLS); the default is a local development mail catcher.",
    readers: ["notifier"],
    default: fixed("smtp://127.0.0.1:1025"),
    parse: parsers.url("smtp:", "smtps:"),
    secret: true,
  }),
  NOTIFIER_MAIL_FROM: defineVar({
    description: "From address of notification emails, e.g. \"coursemesh <notifications@example.edu>\".",
    readers: ["notifier"],
    default: fixed("coursemesh <notifications@coursemesh.localhost>"),
    parse: parsers.nonEmpty,
  }),
  NOTIFIER_SMTP_POOL_SIZE: defineVar({
    description: "Pooled SMTP connections the notifier keeps open.",
    readers: ["notifier"],
    default: fixed("5"),
    parse: parsers.int(1, 100),
  }),
  NOTIFIER_PUBLIC_URL: defineVar({
    description: "Base URL people reach the notifier's HTTP port at; confirmation and unsubscribe links in emails start with it.",
    readers: ["notifier"],
    default: fixed("http://127.0.0.1:8083"),
    parse: parsers.url("http:", "https:"),
  }),
  NOTIFIER_COALESCE_SECONDS: defineVar({
    description: "Seat emails per monitor and recipient within this window collapse into one carrying the latest value (the first goes at once).",
    readers: ["notifier"],
    default: fixed("60"),
    parse: parsers.int(0, 86_400),
  }),
  NOTIFIER_MAX_ATTEMPTS: defineVar({
    description: "Delivery attempts before a notification is FAILED and dead-lettered.",
    readers: ["notifier"],
    default: fixed("8"),
    parse: parsers.int(1, 100),
  }),
  NOTIFIER_RETRY_BASE_MS: defineVar({
    description: "First retry delay after a transient delivery failure; doubles per attempt (with jitter).",
    readers: ["notifier"],
    default: fixed("5000"),
    parse: parsers.int(10, 3_600_000),
  }),
  NOTIFIER_RETRY_MAX_MS: defineVar({
    description: "Longest delay between two delivery attempts.",
    readers: ["notifier"],
    default: fixed("1800000"),
    parse: parsers.int(10, 86_400_000),
  }),
  NOTIFIER_SEND_CONCURRENCY: defineVar({
    description: "Sender workers per process; each claims a batch of due notifications at a time.",
    readers: ["notifier"],
    default: fixed("4"),
    parse: parsers.int(1, 64),
  }),
  NOTIFIER_SEND_BATCH_SIZE: defineVar({
    description: "Notifications a sender worker claims at once.",
    readers: ["notifier"],
    default: fixed("50"),
    parse: parsers.int(1, 1000),
  }),
  NOTIFIER_CONSUME_BATCH_SIZE: defineVar({
    description: "Events one consumer transaction fans out with a single INSERT (per stream read).",
    readers: ["notifier"],
    default: fixed("100"),
    parse: parsers.int(1, 1000),
  }),
  NOTIFIER_CONSUME_CONCURRENCY: defineVar({
    description: "Fan-out batches in flight per stream; two overlap one batch's commit with the next one's work.",
    readers: ["notifier"],
    default: fixed("2"),
    parse: parsers.int(1, 16),
  }),
  NOTIFIER_POLL_MS: defineVar({
    description: "How often an idle sender looks for due notifications (new ones wake it at once in the same process).",
    readers: ["notifier"],
    default: fixed("1000"),
    parse: parsers.int(10, 60_000),
  }),
  NOTIFIER_WEBHOOK_TIMEOUT_MS: defineVar({
    description: "Timeout of one webhook POST.",
    readers: ["notifier"],
    default: fixed("5000"),
    parse: parsers.int(100, 60_000),
  }),
  NOTIFIER_EMAIL_RATE_PER_HOUR: defineVar({
    description: "Per-recipient cap on emails sent in any hour; more are SUPPRESSED, so a flood upstream cannot flood an inbox.",
    readers: ["notifier"],
    default: fixed("30"),
    parse: parsers.int(1, 1_000_000),
  }),
  NOTIFIER_WEBHOOK_RATE_PER_HOUR: defineVar({
    description: "Per-URL cap on webhook deliveries in any hour; more are SUPPRESSED.",
    readers: ["notifier"],
    default: fixed("3600"),
    parse: parsers.int(1, 10_000_000),
  }),
  NOTIFIER_CONFIRM_TTL_HOURS: defineVar({
    description: "How long a subscription confirmation link stays valid.",
    readers: ["notifier"],
    default: fixed("72"),
    parse: parsers.int(1, 24 * 90),
  }),
  NOTIFIER_HISTORY_RETENTION_DAYS: defineVar({
    description:
      "Days a finished notification (SENT, FAILED, COALESCED, SUPPRESSED) stays in the history before it is deleted; never less than the redelivery, coalescing and rate-cap windows (a shorter value is raised to them, with a warning).",
    readers: ["notifier"],
    default: fixed("90"),
    parse: parsers.int(1, 3650),
  }),
  NOTIFIER_HISTORY_PRUNE_INTERVAL_SECONDS: defineVar({
    description: "How often each notifier replica deletes history older than NOTIFIER_HISTORY_RETENTION_DAYS (in batches of 1,000 rows).",
    readers: ["notifier"],
    default: fixed("3600"),
    parse: parsers.int(1, 86_400),
  }),
  NOTIFIER_ALLOW_PRIVATE_HOSTS: defineVar({
    description: "Let webhooks go to private, loopback and link-local addresses (tests and lab networks only; never in production).",
    readers: ["notifier"],
    default: fixed("false"),
    parse: parsers.bool,
  }),
  NOTIFIER_CRASH_AT: defineVar({
    description:
      "TEST ONLY: kill the notifier (SIGKILL) at a chosen point to test recovery: after-fanout (deliveries committed, event not acked) or after-smtp-accept (SMTP accepted, SENT not committed). Never set in a deployment.",
    readers: ["notifier"],
    default: fixed(""),
    parse: parsers.oneOf("", "after-fanout", "after-smtp-accept"),
  }),
  ALLOCATOR_PRIORITY_STEP_MS: defineVar({
    description: "Fairness rule: a request's score is its arrival minus priority x this many milliseconds (priority 0..100).",
    readers: ["allocator"],
    default: fixed("10"),
    parse: parsers.int(0, 60_000),
  }),
  ALLOCATOR_HOLD_MS: defineVar({
    description:
      "Holds every request until its score is this old before it is decided, so priority also holds among requests that arrive within the hold (e.g. when registration opens).",
    readers: ["allocator"],
    default: fixed("0"),
    parse: parsers.int(0, 3_600_000),
  }),
  ALLOCATOR_MAX_PENDING: defineVar({
    description: "Undecided requests per course above which Enroll answers RESOURCE_EXHAUSTED with a retry delay.",
    readers: ["allocator"],
    default: fixed("100000"),
    parse: parsers.int(1, 10_000_000),
  }),
  ALLOCATOR_BATCH_SIZE: defineVar({
    description: "Most pending requests of one course decided in one allocation transaction.",
    readers: ["allocator"],
    default: fixed("2000"),
    parse: parsers.int(1, 50_000),
  }),
  ALLOCATOR_ACCEPT_BATCH_SIZE: defineVar({
    description: "Most concurrent Enroll calls written by one accept insert (one commit for all of them).",
    readers: ["allocator"],
    default: fixed("500"),
    parse: parsers.int(1, 10_000),
  }),
  ALLOCATOR_WORKERS: defineVar({
    description: "Allocation workers per process; each decides one course at a time.",
    readers: ["allocator"],
    default: fixed("2"),
    parse: parsers.int(1, 64),
  }),
  ALLOCATOR_SAFETY_POLL_MS: defineVar({
    description:
      "How often a replica looks for courses with undecided requests it was not woken for (e.g. after another replica crashed). Wake-ups are immediate; this is only the safety net.",
    readers: ["allocator"],
    default: fixed("2000"),
    parse: parsers.int(100, 600_000),
  }),
  ALLOCATOR_MAX_WAIT_MS: defineVar({
    description: "Longest an Enroll with wait=true and no deadline waits for its decision before answering PENDING.",
    readers: ["allocator"],
    default: fixed("30000"),
    parse: parsers.int(0, 600_000),
  }),
  ALLOCATOR_PAUSED: defineVar({
    description:
      "Accept requests but decide none until the process gets SIGUSR2 (tests, benchmarks, incident response). Other replicas keep deciding.",
    readers: ["allocator"],
    default: fixed("false"),
    parse: parsers.bool,
  }),
  NOTIFIER_ADDR: serviceAddress("notifier", ["scraper", "web"]),
  SCRAPER_ADDR: serviceAddress("scraper", ["web"]),
  ALLOCATOR_ADDR: serviceAddress("allocator", ["web"]),
  INGEST_ADDR: serviceAddress("ingest", ["web"]),
  WEB_SESSION_SECRET: defineVar({
    description: "Key of the dashboard's CSRF tokens (HMAC of the session); at least 32 characters. Changing it signs everyone's open forms out of date, not out.",
    readers: ["web"],
    default: fixed(undefined),
    parse: (raw: string) => (raw.length < 32 ? fail("must be at least 32 characters") : raw),
    secret: true,
    required: true,
  }),
  WEB_COOKIE_SECURE: defineVar({
    description: "Mark the dashboard's session cookie Secure (browsers then send it over https only); set true wherever the dashboard is served over https.",
    readers: ["web"],
    default: fixed("false"),
    parse: parsers.bool,
  }),
  WEB_MAX_UPLOAD_BYTES: defineVar({
    description: "Largest PDF upload the dashboard passes on to ingest (all files of one upload together); bigger ones get HTTP 413.",
    readers: ["web"],
    default: fixed(String(50 * 1024 * 1024)),
    parse: parsers.int(1024, 1024 * 1024 * 1024),
  }),
  SCRAPER_CHROMIUM_PATH: defineVar({
    description: "Chromium (or Chrome) executable; empty means the first of /usr/bin/chromium, /usr/bin/chromium-browser, /usr/bin/google-chrome that exists. Never downloaded.",
    readers: ["scraper"],
    default: fixed(undefined),
    parse: parsers.nonEmpty,
  }),
  SCRAPER_ALLOW_PRIVATE_HOSTS: defineVar({
    description: "Let monitors reach private, loopback and link-local addresses (tests, local development, a lab network). Never in production.",
    readers: ["scraper"],
    default: fixed("false"),
    parse: parsers.bool,
  }),
  SCRAPER_ALLOWED_HOSTS: defineVar({
    description: "Comma-separated host or host:port entries the SSRF guard lets through even when they resolve to private addresses (e.g. an intranet registrar).",
    readers: ["scraper"],
    default: fixed(""),
    parse: (raw: string) => raw.split(",").map((entry) => entry.trim().toLowerCase()).filter(Boolean),
  }),
  SCRAPER_MIN_INTERVAL_SECONDS: defineVar({
    description: "Shortest interval_seconds a monitor may ask for.",
    readers: ["scraper"],
    default: fixed("30"),
    parse: parsers.int(1, 86_400),
  }),
  SCRAPER_DEFAULT_INTERVAL_SECONDS: defineVar({
    description: "interval_seconds of a monitor created with 0 (raised to the minimum if below it).",
    readers: ["scraper"],
    default: fixed("300"),
    parse: parsers.int(1, 86_400),
  }),
  SCRAPER_CHECK_TIMEOUT_MS: defineVar({
    description: "Longest one check may take (load the page and wait for the extractor's target); a monitor's lease lasts this plus 10 s.",
    readers: ["scraper"],
    default: fixed("20000"),
    parse: parsers.int(500, 300_000),
  }),
  SCRAPER_BROWSER_CONCURRENCY: defineVar({
    description: "Browser checks in flight per process (pages open at once).",
    readers: ["scraper"],
    default: fixed("8"),
    parse: parsers.int(1, 256),
  }),
  SCRAPER_HTTP_CONCURRENCY: defineVar({
    description: "HTTP-mode checks in flight per process (they mostly wait on the network and Postgres).",
    readers: ["scraper"],
    default: fixed("64"),
    parse: parsers.int(1, 1024),
  }),
  SCRAPER_HOST_CONCURRENCY: defineVar({
    description: "Checks in flight per host (host:port) per process; also the reused pages kept per host.",
    readers: ["scraper"],
    default: fixed("2"),
    parse: parsers.int(1, 64),
  }),
  SCRAPER_HOST_GAP_MS: defineVar({
    description: "Least time between the starts of two checks of one host, per process.",
    readers: ["scraper"],
    default: fixed("250"),
    parse: parsers.int(0, 60_000),
  }),
  SCRAPER_MAX_CONTEXTS: defineVar({
    description: "Browser contexts kept open per process; the least recently used idle one closes first.",
    readers: ["scraper"],
    default: fixed("32"),
    parse: parsers.int(1, 1000),
  }),
  SCRAPER_CONTEXT_IDLE_MS: defineVar({
    description: "An idle browser context closes after this long (an isolated monitor's cookies are kept in memory for its next check).",
    readers: ["scraper"],
    default: fixed("60000"),
    parse: parsers.int(1000, 3_600_000),
  }),
  SCRAPER_ERROR_AFTER_FAILURES: defineVar({
    description: "Consecutive failed checks that turn a monitor's health to ERROR.",
    readers: ["scraper"],
    default: fixed("3"),
    parse: parsers.int(1, 100),
  }),
  SCRAPER_MAX_BACKOFF_SECONDS: defineVar({
    description: "Longest wait before re-checking a failing monitor (the wait doubles per failure from its interval, with jitter).",
    readers: ["scraper"],
    default: fixed("3600"),
    parse: parsers.int(1, 86_400),
  }),
  SCRAPER_POLL_MS: defineVar({
    description: "How often the scheduler looks for due monitors.",
    readers: ["scraper"],
    default: fixed("500"),
    parse: parsers.int(10, 60_000),
  }),
  SCRAPER_SWEEP_INTERVAL_MS: defineVar({
    description: "How often the sweeper marks monitors STALE that had no good check for 3 intervals.",
    readers: ["scraper"],
    default: fixed("5000"),
    parse: parsers.int(100, 600_000),
  }),
  SCRAPER_NOTIFIER_TIMEOUT_MS: defineVar({
    description: "Deadline of the scraper's calls to the notifier (subscriptions from notify_emails).",
    readers: ["scraper"],
    default: fixed("5000"),
    parse: parsers.int(100, 60_000),
  }),
  INGEST_MAX_BYTES: defineVar({
    description: "Largest upload (all files of one job together); bigger uploads are refused while streaming (RESOURCE_EXHAUSTED / HTTP 413).",
    readers: ["ingest"],
    default: fixed(String(50 * 1024 * 1024)),
    parse: parsers.int(1024, 1024 * 1024 * 1024),
  }),
  INGEST_CONCURRENCY: defineVar({
    description: "Jobs one ingest process works on at once (each on its own worker thread).",
    readers: ["ingest"],
    default: fixed("3"),
    parse: parsers.int(1, 64),
  }),
  INGEST_MAX_QUEUED: defineVar({
    description: "PENDING and PROCESSING jobs above which uploads and retries are refused with QUEUE_FULL.",
    readers: ["ingest"],
    default: fixed("1000"),
    parse: parsers.int(1, 1_000_000),
  }),
  INGEST_MAX_ATTEMPTS: defineVar({
    description: "Processing attempts before a job FAILS and its work item goes to the DLQ.",
    readers: ["ingest"],
    default: fixed("3"),
    parse: parsers.int(1, 20),
  }),
  INGEST_RETRY_BACKOFF_MS: defineVar({
    description: "Wait before the first retry of a failed attempt; each further retry waits 5 times longer.",
    readers: ["ingest"],
    default: fixed("2000"),
    parse: parsers.int(10, 600_000),
  }),
  INGEST_ACK_WAIT_MS: defineVar({
    description: "A worker's claim on a job (and the work consumer's ack wait); heartbeats renew it every third. A killed worker's job is taken over after it.",
    readers: ["ingest"],
    default: fixed("30000"),
    parse: parsers.int(300, 600_000),
  }),
  INGEST_JOB_TIMEOUT_MS: defineVar({
    description: "Longest one processing attempt may run before it is stopped and counted as failed.",
    readers: ["ingest"],
    default: fixed("600000"),
    parse: parsers.int(1000, 86_400_000),
  }),
  INGEST_SWEEP_INTERVAL_MS: defineVar({
    description: "How often the sweeper removes stored PDFs no job refers to and requeues jobs whose worker vanished.",
    readers: ["ingest"],
    default: fixed("600000"),
    parse: parsers.int(100, 86_400_000),
  }),
  INGEST_BLOB_GRACE_MS: defineVar({
    description: "How long a stored PDF that no job refers to is kept before the sweeper removes it.",
    readers: ["ingest"],
    default: fixed("3600000"),
    parse: parsers.int(0, 30 * 86_400_000),
  }),
  INGEST_DOCUMENTS_MAX_BYTES: defineVar({
    description: "Size limit of the JetStream object store bucket `documents` (the server reserves it up front).",
    readers: ["ingest"],
    default: fixed(String(5 * 1024 * 1024 * 1024)),
    parse: parsers.int(1024 * 1024, 1024 * 1024 * 1024 * 1024),
  }),
  OUTBOX_RELAY_POLL_INTERVAL_MS: defineVar({
    description: "How often an idle outbox relay looks for rows no writer woke it for; a missed wake-up is published within this.",
    readers: SERVICE_NAMES,
    default: fixed("1000"),
    parse: parsers.int(10, 60_000),
  }),
  OUTBOX_RELAY_STANDBY_RETRY_MS: defineVar({
    description: "How often a standby replica's outbox relay tries to take over; events of a dead leader wait about this long.",
    readers: SERVICE_NAMES,
    default: fixed("2000"),
    parse: parsers.int(50, 60_000),
  }),
  OUTBOX_RELAY_MAX_IN_FLIGHT: defineVar({
    description: "Publishes the outbox relay keeps awaiting JetStream's ack at once.",
    readers: SERVICE_NAMES,
    default: fixed("2048"),
    parse: parsers.int(1, 65_536),
  }),
  EVENTS_STREAM_REPLICAS: defineVar({
    description: "Replicas of the JetStream streams a service provisions: 1 for a single NATS server, 3 for a cluster.",
    readers: SERVICE_NAMES,
    default: fixed("1"),
    parse: parsers.int(1, 5),
  }),
  EVENTS_STREAM_MAX_BYTES: defineVar({
    description:
      "Size cap (max_bytes) of each JetStream stream a service provisions; JetStream reserves it on the server up front, so test runs use a small one.",
    readers: SERVICE_NAMES,
    default: fixed(String(1024 * 1024 * 1024)),
    parse: parsers.int(1024 * 1024, Number.MAX_SAFE_INTEGER),
  }),
  INGEST_WORKER_NICE: defineVar({
    description: "Nice value (0–19) of the PDF worker threads, so uploads and RPCs are answered first when the cores are busy; 0 treats both alike.",
    readers: ["ingest"],
    default: fixed("10"),
    parse: parsers.int(0, 19),
  }),
} as const satisfies Record<string, VarSpec<unknown>>;

export type ConfigName = keyof typeof CONFIG_REGISTRY;
type ValueOf<K extends ConfigName> = ReturnType<(typeof CONFIG_REGISTRY)[K]["parse"]>;

/** The validated configuration of one service. Optional variables without a value are `undefined`. */
export type Config = { readonly [K in ConfigName]: ValueOf<K> | undefined } & {
  readonly service: ProcessName;
};

/** Whether `service` reads `name`. */
export function readsVariable(service: ProcessName, name: ConfigName): boolean {
  const readers = CONFIG_REGISTRY[name].readers;
  return readers === "all" || readers.includes(service);
}

/**
 * Reads and validates the configuration of `service` from `env`. Throws one error listing every
 * problem, each naming its variable, so a bad deployment fails at start with an actionable message.
 */
export function loadConfig(service: ProcessName, env: Record<string, string | undefined> = process.env): Config {
  const values: Record<string, unknown> = { service };
  const problems: string[] = [];
  for (const [name, spec] of Object.entries(CONFIG_REGISTRY) as [ConfigName, VarSpec<unknown>][]) {
    if (!readsVariable(service, name)) continue;
    const raw = env[name] ?? spec.default(service);
    if (raw === undefined) {
      if (spec.required) problems.push(`${name} must be set`);
      continue;
    }
    try {
      values[name] = spec.parse(raw);
    } catch (error) {
      problems.push(`${name} ${error instanceof ConfigError ? error.message : String(error)}`);
    }
  }
  const config = values as Config;
  if (!config.AUTH_DISABLED && !config.AUTH_JWT_SECRET && !config.AUTH_JWKS_URL) {
    // The dashboard has no unauthenticated mode: it shows only what a signed-in token may see.
    problems.push(`AUTH_JWT_SECRET or AUTH_JWKS_URL must be set${readsVariable(service, "AUTH_DISABLED") ? " (or AUTH_DISABLED=true for local development)" : ""}`);
  }
  if (problems.length > 0) {
    throw new ConfigError(`invalid configuration for ${service}:\n  - ${problems.join("\n  - ")}`);
  }
  return config;
}

/** Required value accessor: narrows an optional variable that the caller knows is set. */
export function required<K extends ConfigName>(config: Config, name: K): ValueOf<K> {
  const value = config[name];
  if (value === undefined) throw new ConfigError(`${name} must be set`);
  return value as ValueOf<K>;
}

export { ConfigError };
