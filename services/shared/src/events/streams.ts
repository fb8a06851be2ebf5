/**
 * The JetStream streams of DESIGN.md §Events and their idempotent provisioning. Subjects here are
 * written without the deployment's NATS_PREFIX; `prefixedSubject` and `streamName` add it.
 */
import {
  DiscardPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  RetentionPolicy,
  StorageType,
  type JetStreamManager,
  type StreamConfig,
  type StreamInfo,
} from "@nats-io/jetstream";

export const STREAM_NAMES = ["SEATS", "ENROLLMENT", "INGEST", "WORK", "DLQ"] as const;
export type StreamName = (typeof STREAM_NAMES)[number];

/** The knobs an operator (or a test) may change without changing what a stream carries. */
export interface StreamLimits {
  maxAgeMs: number;
  maxBytes: number;
  /** How long JetStream remembers a `Nats-Msg-Id`; a relay republishes within seconds, so minutes suffice. */
  duplicateWindowMs: number;
  replicas: number;
}

export interface StreamDefinition extends StreamLimits {
  description: string;
  /** Subject patterns without the prefix; no two streams' patterns overlap. */
  subjects: string[];
  retention: "limits" | "workqueue";
  /** `new` refuses publishes when full (the outbox keeps the rows) instead of dropping unprocessed messages. */
  discard: "old" | "new";
}

const DAY_MS = 24 * 60 * 60 * 1000;
const GIB = 1024 * 1024 * 1024;
const DEFAULT_DUPLICATE_WINDOW_MS = 2 * 60 * 1000;

/** What each stream carries and how long it keeps it (DESIGN.md §Events). */
export const STREAM_DEFINITIONS: Record<StreamName, StreamDefinition> = {
  SEATS: {
    description: "Seat changes and monitor health, scraper to notifier.",
    subjects: ["seats.changed.*", "seats.health.*"],
    retention: "limits",
    discard: "old",
    maxAgeMs: 7 * DAY_MS,
    maxBytes: GIB,
    duplicateWindowMs: DEFAULT_DUPLICATE_WINDOW_MS,
    replicas: 1,
  },
  ENROLLMENT: {
    description: "Enrollment decisions, promotions and drops, allocator to notifier.",
    subjects: ["enrollment.decided.*", "enrollment.promoted.*", "enrollment.dropped.*"],
    retention: "limits",
    discard: "old",
    maxAgeMs: 14 * DAY_MS,
    maxBytes: GIB,
    duplicateWindowMs: DEFAULT_DUPLICATE_WINDOW_MS,
    replicas: 1,
  },
  INGEST: {
    description: "Ingest job outcomes and created courses, ingest to notifier.",
    subjects: ["ingest.job.completed.*", "ingest.job.failed.*", "ingest.course.created.*"],
    retention: "limits",
    discard: "old",
    maxAgeMs: 14 * DAY_MS,
    maxBytes: GIB,
    duplicateWindowMs: DEFAULT_DUPLICATE_WINDOW_MS,
    replicas: 1,
  },
  WORK: {
    description: "Ingest work items; each is removed once a worker acknowledges it.",
    subjects: ["work.ingest"],
    retention: "workqueue",
    discard: "new",
    maxAgeMs: 7 * DAY_MS,
    maxBytes: GIB,
    duplicateWindowMs: DEFAULT_DUPLICATE_WINDOW_MS,
    replicas: 1,
  },
  DLQ: {
    description: "Messages a consumer gave up on, with the error, as dlq.<service>.<consumer>.",
    subjects: ["dlq.*.*"],
    retention: "limits",
    discard: "new",
    maxAgeMs: 30 * DAY_MS,
    maxBytes: GIB,
    duplicateWindowMs: DEFAULT_DUPLICATE_WINDOW_MS,
    replicas: 1,
  },
};

/** The stream's name on the server: `SEATS`, or `T1A2B_SEATS` under prefix `t1a2b`. */
export function streamName(prefix: string, stream: StreamName): string {
  return prefix ? `${prefix.toUpperCase()}_${stream}` : stream;
}

/** A subject (or pattern) as published: `seats.changed.<id>`, or `t1a2b.seats.changed.<id>` under a prefix. */
export function prefixedSubject(prefix: string, subject: string): string {
  return prefix ? `${prefix}.${subject}` : subject;
}

/** Removes the deployment prefix from a received subject. */
export function unprefixedSubject(prefix: string, subject: string): string {
  return prefix && subject.startsWith(`${prefix}.`) ? subject.slice(prefix.length + 1) : subject;
}

/** A durable consumer's name on the server; the prefix keeps test runs and deployments apart. */
export function consumerName(prefix: string, durable: string): string {
  return prefix ? `${prefix}_${durable}` : durable;
}

/** Whether a concrete subject matches a NATS pattern (`*` one token, `>` the rest). */
export function subjectMatches(pattern: string, subject: string): boolean {
  const p = pattern.split(".");
  const s = subject.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return s.length > i;
    if (i >= s.length) return false;
    if (p[i] !== "*" && p[i] !== s[i]) return false;
  }
  return p.length === s.length;
}

/** Whether some subject matches both patterns, so two streams holding them would overlap. */
export function subjectsOverlap(a: string, b: string): boolean {
  const x = a.split(".");
  const y = b.split(".");
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const l = x[i];
    const r = y[i];
    if (l === ">") return r !== undefined;
    if (r === ">") return l !== undefined;
    if (l === undefined || r === undefined) return false;
    if (l !== "*" && r !== "*" && l !== r) return false;
  }
  return true;
}

const TOKEN = /^[A-Za-z0-9_\-:]+$/;

/** The stream a concrete event subject belongs to; throws for a malformed or unknown subject. */
export function streamForSubject(subject: string): StreamName {
  const tokens = subject.split(".");
  if (!tokens.every((t) => TOKEN.test(t))) {
    throw new Error(`event subject "${subject}" must be dot-separated tokens of letters, digits, _, - or : (no wildcards or spaces)`);
  }
  for (const name of STREAM_NAMES) {
    if (STREAM_DEFINITIONS[name].subjects.some((pattern) => subjectMatches(pattern, subject))) return name;
  }
  throw new Error(`event subject "${subject}" belongs to no stream; add its pattern to STREAM_DEFINITIONS`);
}

const nanos = (ms: number) => ms * 1_000_000;

/** The server-side configuration of one stream under `prefix`. */
export function streamConfig(prefix: string, stream: StreamName, overrides: Partial<StreamLimits> = {}): Partial<StreamConfig> & { name: string } {
  const definition = { ...STREAM_DEFINITIONS[stream], ...overrides };
  return {
    name: streamName(prefix, stream),
    description: definition.description,
    subjects: definition.subjects.map((s) => prefixedSubject(prefix, s)),
    retention: definition.retention === "workqueue" ? RetentionPolicy.Workqueue : RetentionPolicy.Limits,
    discard: definition.discard === "new" ? DiscardPolicy.New : DiscardPolicy.Old,
    storage: StorageType.File,
    num_replicas: definition.replicas,
    max_age: nanos(definition.maxAgeMs),
    max_bytes: definition.maxBytes,
    duplicate_window: nanos(Math.min(definition.duplicateWindowMs, definition.maxAgeMs)),
    max_msg_size: -1,
    allow_direct: true,
  };
}

export interface ProvisionOptions {
  /** Replicas of every stream (EVENTS_STREAM_REPLICAS); a per-stream limit overrides it. */
  replicas?: number;
  /** Size cap of every stream (EVENTS_STREAM_MAX_BYTES); a per-stream limit overrides it. */
  maxBytes?: number;
  /** Per-stream changes to the defaults (tests use small `maxBytes`: the server reserves it up front). */
  limits?: Partial<Record<StreamName, Partial<StreamLimits>>>;
}

function isNotFound(error: unknown): boolean {
  return error instanceof JetStreamApiError && error.code === JetStreamApiCodes.StreamNotFound;
}

/** "stream name already in use" (with a different configuration). */
const STREAM_NAME_IN_USE = 10058;

/**
 * Creates the named streams, or brings an existing one's configuration up to date; safe to run from
 * every replica at every start. A service provisions what it produces and what it consumes.
 */
export async function provisionStreams(
  jsm: JetStreamManager,
  prefix: string,
  names: readonly StreamName[],
  options: ProvisionOptions = {},
): Promise<StreamInfo[]> {
  const infos: StreamInfo[] = [];
  for (const stream of names) {
    const config = streamConfig(prefix, stream, {
      ...(options.replicas ? { replicas: options.replicas } : {}),
      ...(options.maxBytes ? { maxBytes: options.maxBytes } : {}),
      ...options.limits?.[stream],
    });
    let existing: StreamInfo | undefined;
    try {
      existing = await jsm.streams.info(config.name);
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
    if (!existing) {
      try {
        infos.push(await jsm.streams.add(config));
        continue;
      } catch (error) {
        // Another replica created it between our look and our add: fall through to update.
        if (!(error instanceof JetStreamApiError && error.code === STREAM_NAME_IN_USE)) throw error;
        existing = await jsm.streams.info(config.name);
      }
    }
    // Retention and storage cannot change on a live stream; everything else here may.
    const { retention: _retention, storage: _storage, ...updatable } = config;
    infos.push(await jsm.streams.update(config.name, { ...existing.config, ...updatable }));
  }
  return infos;
}

/** Deletes the named streams under `prefix` if they exist (tests clean up with it). */
export async function deleteStreams(jsm: JetStreamManager, prefix: string, names: readonly StreamName[] = STREAM_NAMES): Promise<void> {
  for (const stream of names) {
    try {
      await jsm.streams.delete(streamName(prefix, stream));
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
  }
}
