/**
 * Who hears about changes: `Enroll` with wait=true and `WatchRequest` wait on a request; the
 * allocation workers wait for pending requests. Within a process a committer tells them at once;
 * other replicas hear it through one debounced Postgres NOTIFY (a NOTIFY inside the writers'
 * transactions would serialise their commits), so any replica can answer for any request.
 */
import type { Logger } from "@coursemesh/shared/logger.ts";
import type { Sql } from "@coursemesh/shared/db.ts";
import { selectRequestsByIds, type RequestRecord } from "./store.ts";

const CHANNEL = "coursemesh_allocator_changes";
/**
 * Coalesces the NOTIFYs of a burst of commits into one: at most 50 a second from a busy replica. Only
 * other replicas wait for them (this one tells its own waiters at once), and a worker that finds a
 * course locked retries it by itself, so 20 ms is latency for cross-replica watchers only.
 */
const NOTIFY_DEBOUNCE_MS = 20;
/** NOTIFY payloads are limited to 8000 bytes; a UUID and its comma take 37. */
const COURSES_PER_NOTIFY = 150;

interface Notice {
  from: string;
  changed: string[];
  pending: string[];
}

type Poke = () => void;

/** Fan-out of "this course's requests changed" and "this course has new pending requests", in process and across replicas. */
export class ChangeFeed {
  private readonly watchers = new Map<string, Map<string, Set<Poke>>>();
  private readonly outgoing = { changed: new Set<string>(), pending: new Set<string>() };
  private notifyTimer: ReturnType<typeof setTimeout> | undefined;
  private notifying: Promise<void> = Promise.resolve();
  private unlisten: (() => Promise<void>) | undefined;
  private pendingListener: (courseIds: string[]) => void = () => {};
  readonly instanceId = Bun.randomUUIDv7();

  constructor(
    private readonly sql: Sql,
    private readonly logger: Logger,
  ) {}

  /** Starts hearing other replicas; `onPending` gets courses that have new pending requests. */
  async start(onPending: (courseIds: string[]) => void): Promise<void> {
    this.pendingListener = onPending;
    const { unlisten } = await this.sql.listen(
      CHANNEL,
      (payload) => this.receive(payload),
      // After a reconnect, notices may have been missed: everyone looks again.
      () => this.pokeEverything(),
    );
    this.unlisten = unlisten;
  }

  /** Stops hearing other replicas and sends what is still queued. */
  async stop(): Promise<void> {
    clearTimeout(this.notifyTimer);
    await this.flush();
    await this.notifying;
    await this.unlisten?.().catch(() => {});
  }

  /** Calls `poke` whenever the request (or, from another replica, its course) may have changed; returns the unsubscribe. */
  watch(courseId: string, requestId: string, poke: Poke): () => void {
    let byRequest = this.watchers.get(courseId);
    if (!byRequest) this.watchers.set(courseId, (byRequest = new Map()));
    let pokes = byRequest.get(requestId);
    if (!pokes) byRequest.set(requestId, (pokes = new Set()));
    pokes.add(poke);
    return () => {
      pokes.delete(poke);
      if (pokes.size === 0) byRequest.delete(requestId);
      if (byRequest.size === 0) this.watchers.delete(courseId);
    };
  }

  /**
   * A transaction of this process committed changes to a course's requests. `requestIds` names the
   * requests whose status changed; positions of others may have moved too, so waitlisted watchers
   * are poked as well.
   */
  changed(courseId: string, requestIds?: Iterable<string>): void {
    this.outgoing.changed.add(courseId);
    this.scheduleNotify();
    const byRequest = this.watchers.get(courseId);
    if (!byRequest) return;
    if (!requestIds) {
      for (const pokes of byRequest.values()) for (const poke of pokes) poke();
      return;
    }
    for (const id of requestIds) for (const poke of byRequest.get(id) ?? []) poke();
  }

  /** Requests were accepted here for these courses; other replicas' workers may take them. */
  pendingAdded(courseIds: Iterable<string>): void {
    for (const id of courseIds) this.outgoing.pending.add(id);
    this.scheduleNotify();
  }

  private pokeEverything(): void {
    for (const byRequest of this.watchers.values()) for (const pokes of byRequest.values()) for (const poke of pokes) poke();
    this.pendingListener([]);
  }

  private receive(payload: string): void {
    let notice: Notice;
    try {
      notice = JSON.parse(payload) as Notice;
    } catch {
      return;
    }
    if (notice.from === this.instanceId) return;
    for (const courseId of notice.changed) {
      const byRequest = this.watchers.get(courseId);
      if (byRequest) for (const pokes of byRequest.values()) for (const poke of pokes) poke();
    }
    if (notice.pending.length) this.pendingListener(notice.pending);
  }

  private scheduleNotify(): void {
    this.notifyTimer ??= setTimeout(() => {
      this.notifyTimer = undefined;
      void this.flush();
    }, NOTIFY_DEBOUNCE_MS);
  }

  private flush(): Promise<void> {
    const changed = [...this.outgoing.changed];
    const pending = [...this.outgoing.pending];
    this.outgoing.changed.clear();
    this.outgoing.pending.clear();
    if (changed.length === 0 && pending.length === 0) return this.notifying;
    const notices: Notice[] = [];
    for (let i = 0; i < Math.max(changed.length, pending.length); i += COURSES_PER_NOTIFY) {
      notices.push({ from: this.instanceId, changed: changed.slice(i, i + COURSES_PER_NOTIFY), pending: pending.slice(i, i + COURSES_PER_NOTIFY) });
    }
    // One at a time, in order; a failed NOTIFY costs other replicas only latency (their safety poll catches up).
    this.notifying = this.notifying.then(async () => {
      for (const notice of notices) {
        await this.sql`select pg_notify(${CHANNEL}, ${JSON.stringify(notice)})`.catch((error) =>
          this.logger.warn({ err: error }, "could not notify other allocator replicas"),
        );
      }
    });
    return this.notifying;
  }
}

/**
 * Reads requests by id for many waiters at once: every read asked for in the same tick goes into
 * one query, so a batch that decides a thousand waited-on requests costs one read, not a thousand.
 */
export class RequestReader {
  private queued = new Map<string, ((row: RequestRecord | undefined) => void)[]>();
  private failures = new Map<string, ((error: unknown) => void)[]>();
  private scheduled = false;

  constructor(private readonly sql: Sql) {}

  /** The request's current state (undefined if it does not exist). */
  read(id: string): Promise<RequestRecord | undefined> {
    return new Promise((resolve, reject) => {
      this.queued.set(id, [...(this.queued.get(id) ?? []), resolve]);
      this.failures.set(id, [...(this.failures.get(id) ?? []), reject]);
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => void this.run());
      }
    });
  }

  private async run(): Promise<void> {
    const queued = this.queued;
    const failures = this.failures;
    this.queued = new Map();
    this.failures = new Map();
    this.scheduled = false;
    try {
      const rows = new Map((await selectRequestsByIds(this.sql, [...queued.keys()])).map((row) => [row.id, row]));
      for (const [id, resolvers] of queued) for (const resolve of resolvers) resolve(rows.get(id));
    } catch (error) {
      for (const rejecters of failures.values()) for (const reject of rejecters) reject(error);
    }
  }
}

/**
 * The request's state each time it may have changed (read again after every poke; pokes that come
 * while a read runs are folded into one more read), until `signal` aborts. The first state is read
 * right after subscribing, so a change between the caller's last read and the subscription is seen.
 */
export async function* follow(feed: ChangeFeed, reader: RequestReader, courseId: string, requestId: string, signal: AbortSignal): AsyncGenerator<RequestRecord> {
  let poked = true;
  let notify: (() => void) | undefined;
  const unwatch = feed.watch(courseId, requestId, () => {
    poked = true;
    notify?.();
  });
  const onAbort = () => notify?.();
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    while (!signal.aborted) {
      if (poked) {
        poked = false;
        const row = await reader.read(requestId);
        if (row && !signal.aborted) yield row;
        continue;
      }
      await new Promise<void>((resolve) => (notify = resolve));
      notify = undefined;
    }
  } finally {
    unwatch();
    signal.removeEventListener("abort", onAbort);
  }
}
