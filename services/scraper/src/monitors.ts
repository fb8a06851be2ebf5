/**
 * Monitor rules with no I/O: what a valid monitor is, what a check result does to a monitor (health,
 * failures, backoff, whether the seats changed), and which mode changes are allowed. `mode` is user
 * intent, `health` is observed; nothing here lets one set the other.
 */
import { z } from "zod";
import { failedPrecondition, invalidArgument, type FieldViolation } from "@coursemesh/shared/grpc/errors.ts";
import { validateExtractor, type ExtractorInput, type ExtractorSpec } from "./extract.ts";
import { seatsChanged, type SeatReading } from "./seats.ts";

export type Mode = "ACTIVE" | "PAUSED" | "STOPPED";
export type Health = "PENDING" | "HEALTHY" | "STALE" | "ERROR";
export type FetchModeName = "BROWSER" | "HTTP";
export type IsolationName = "HOST" | "MONITOR";

/** What a monitor watches and how: fixed at creation. */
export interface MonitorTarget {
  url: string;
  /** host[:port] of the URL, lowercase: the per-host pool and politeness key. */
  host: string;
  label: string;
  intervalSeconds: number;
  extractor: ExtractorSpec;
  fetchMode: FetchModeName;
  isolation: IsolationName;
}

/** A monitor as stored. */
export interface MonitorRecord extends MonitorTarget {
  id: string;
  owner: string;
  mode: Mode;
  health: Health;
  seats: SeatReading | null;
  lastCheckedAt: Date | null;
  lastChangedAt: Date | null;
  lastSuccessAt: Date | null;
  lastError: string;
  consecutiveFailures: number;
  nextCheckAt: Date | null;
  version: number;
  subscriptionIds: string[];
  traceparent: string | null;
  createdAt: Date;
  updatedAt: Date;
}

/** The scheduling knobs from configuration. */
export interface ScheduleSettings {
  minIntervalSeconds: number;
  defaultIntervalSeconds: number;
  errorAfterFailures: number;
  maxBackoffSeconds: number;
}

/** A monitor to create, validated. */
export interface NewMonitor extends MonitorTarget {
  notifyEmails: string[];
}

export interface CreateInput {
  url: string;
  label: string;
  intervalSeconds: number;
  notifyEmails: string[];
  extractor: ExtractorInput | undefined;
  fetchMode: FetchModeName;
  isolation: IsolationName;
}

const MAX_URL_LENGTH = 2048;
const MAX_LABEL_LENGTH = 200;
const MAX_EMAILS = 20;
const email = z.email();

/** Checks a CreateMonitor request (everything but the SSRF guard, which needs DNS); throws INVALID_ARGUMENT. */
export function validateNewMonitor(input: CreateInput, settings: ScheduleSettings): NewMonitor {
  let url: URL;
  try {
    url = new URL(input.url.trim());
  } catch {
    throw invalidArgument("URL_INVALID", `url "${input.url}" is not an absolute http or https URL`, { fieldViolations: [{ field: "url", description: "must be an absolute http(s) URL" }] });
  }
  if ((url.protocol !== "http:" && url.protocol !== "https:") || !url.hostname || input.url.length > MAX_URL_LENGTH || url.username || url.password) {
    const why = url.username || url.password ? "must not carry a user name or password" : input.url.length > MAX_URL_LENGTH ? `must be at most ${MAX_URL_LENGTH} characters` : "must be an http or https URL";
    throw invalidArgument("URL_INVALID", `url ${why}`, { fieldViolations: [{ field: "url", description: why }] });
  }
  const label = input.label.trim();
  if (!label) throw invalidArgument("LABEL_REQUIRED", "label is required, e.g. \"CMPUT 201 LEC A1\"", { fieldViolations: [{ field: "label", description: "must not be empty" }] });
  if (label.length > MAX_LABEL_LENGTH) {
    throw invalidArgument("LABEL_REQUIRED", `label must be at most ${MAX_LABEL_LENGTH} characters`, { fieldViolations: [{ field: "label", description: `must be at most ${MAX_LABEL_LENGTH} characters` }] });
  }
  const intervalSeconds = input.intervalSeconds === 0 ? Math.max(settings.defaultIntervalSeconds, settings.minIntervalSeconds) : input.intervalSeconds;
  if (intervalSeconds < settings.minIntervalSeconds || intervalSeconds > 7 * 86_400) {
    const description = intervalSeconds < settings.minIntervalSeconds ? `must be at least ${settings.minIntervalSeconds}` : "must be at most 604800 (a week)";
    throw invalidArgument("INTERVAL_TOO_SHORT", `interval_seconds ${description}, got ${input.intervalSeconds}`, {
      fieldViolations: [{ field: "interval_seconds", description }],
      metadata: { min_interval_seconds: String(settings.minIntervalSeconds) },
    });
  }
  if (!input.extractor) {
    throw invalidArgument("EXTRACTOR_REQUIRED", "extractor is required: beartracks, css or json", { fieldViolations: [{ field: "extractor", description: "set one of beartracks, css, json" }] });
  }
  const extracted = validateExtractor(input.extractor);
  if ("violations" in extracted) {
    throw invalidArgument("EXTRACTOR_INVALID", `extractor is invalid: ${extracted.violations.map((v) => `${v.field} ${v.description}`).join("; ")}`, { fieldViolations: extracted.violations });
  }
  const violations: FieldViolation[] = [];
  const notifyEmails: string[] = [];
  input.notifyEmails.forEach((raw, i) => {
    const address = raw.trim();
    if (!email.safeParse(address).success) violations.push({ field: `notify_emails[${i}]`, description: `"${raw}" is not an email address` });
    else if (!notifyEmails.includes(address.toLowerCase())) notifyEmails.push(address.toLowerCase());
  });
  if (input.notifyEmails.length > MAX_EMAILS) violations.push({ field: "notify_emails", description: `at most ${MAX_EMAILS} addresses` });
  if (violations.length) throw invalidArgument("EMAIL_INVALID", violations.map((v) => `${v.field}: ${v.description}`).join("; "), { fieldViolations: violations });
  return {
    url: url.href,
    host: url.host.toLowerCase(),
    label,
    intervalSeconds,
    extractor: extracted.spec,
    fetchMode: input.fetchMode,
    isolation: input.isolation,
    notifyEmails,
  };
}

/** Refuses mode changes of a STOPPED monitor (it keeps its history and takes no checks). */
export function assertNotStopped(monitor: Pick<MonitorRecord, "id" | "mode">, action: string): void {
  if (monitor.mode === "STOPPED") {
    throw failedPrecondition("MONITOR_STOPPED", `monitor ${monitor.id} is STOPPED and cannot be ${action}; create a new monitor instead`, { metadata: { monitor_id: monitor.id } });
  }
}

/** Seconds until the next check: the interval when healthy; doubling per failure (capped) with jitter when failing. */
export function nextCheckDelaySeconds(intervalSeconds: number, consecutiveFailures: number, maxBackoffSeconds: number, random: () => number = Math.random): number {
  const base = consecutiveFailures === 0 ? intervalSeconds : Math.min(Math.max(maxBackoffSeconds, intervalSeconds), intervalSeconds * 2 ** Math.min(consecutiveFailures - 1, 20));
  // Jitter only adds time, so no monitor is ever checked sooner than its interval; it spreads
  // monitors created together so they do not all fall due in the same poll.
  const jitter = base * 0.1 * random();
  return base + Math.min(jitter, 30);
}

/** The check result the scheduler records (a successful reading, or a failure the page is to blame for). */
export type RecordedOutcome = { kind: "ok"; seats: SeatReading; observedAt: Date } | { kind: "failed"; error: string; observedAt: Date };

/** What a check does to a monitor. */
export interface CheckEffect {
  health: Health;
  seats: SeatReading | null;
  lastError: string;
  consecutiveFailures: number;
  lastSuccessAt: Date | null;
  lastChangedAt: Date | null;
  nextCheckDelaySeconds: number;
  /** Set when the seats differ from the last reading (or this is the first one). */
  change?: { previous: SeatReading | null; current: SeatReading };
  /** Set when health moved. */
  healthChange?: { previous: Health; current: Health };
  /** The new aggregate version: one more per event (seat change, then health change). */
  version: number;
}

/** Applies a check result to a monitor: HEALTHY only after a reading; ERROR after N failures in a row. */
export function applyCheck(monitor: MonitorRecord, outcome: RecordedOutcome, settings: Pick<ScheduleSettings, "errorAfterFailures" | "maxBackoffSeconds">, random: () => number = Math.random): CheckEffect {
  if (outcome.kind === "ok") {
    const changed = seatsChanged(monitor.seats, outcome.seats);
    const health: Health = "HEALTHY";
    const healthChange = monitor.health !== health ? { previous: monitor.health, current: health } : undefined;
    return {
      health,
      seats: outcome.seats,
      lastError: "",
      consecutiveFailures: 0,
      lastSuccessAt: outcome.observedAt,
      lastChangedAt: changed ? outcome.observedAt : monitor.lastChangedAt,
      nextCheckDelaySeconds: nextCheckDelaySeconds(monitor.intervalSeconds, 0, settings.maxBackoffSeconds, random),
      change: changed ? { previous: monitor.seats, current: outcome.seats } : undefined,
      healthChange,
      version: monitor.version + (changed ? 1 : 0) + (healthChange ? 1 : 0),
    };
  }
  const failures = monitor.consecutiveFailures + 1;
  // Until N failures in a row the last reading stands (a single timeout is not an outage).
  const health: Health = failures >= settings.errorAfterFailures ? "ERROR" : monitor.health;
  const healthChange = monitor.health !== health ? { previous: monitor.health, current: health } : undefined;
  return {
    health,
    seats: monitor.seats,
    lastError: outcome.error,
    consecutiveFailures: failures,
    lastSuccessAt: monitor.lastSuccessAt,
    lastChangedAt: monitor.lastChangedAt,
    nextCheckDelaySeconds: nextCheckDelaySeconds(monitor.intervalSeconds, failures, settings.maxBackoffSeconds, random),
    healthChange,
    version: monitor.version + (healthChange ? 1 : 0),
  };
}

/** Intervals without a good check after which the sweeper marks a monitor STALE. */
export const STALE_AFTER_INTERVALS = 3;
