/**
 * Allocation: workers decide pending requests a batch at a time. A worker takes courses that have
 * new requests, locks their rows (skipping any another replica holds), decides up to
 * ALLOCATOR_BATCH_SIZE requests of each with one set-based statement (fairness rule: score order
 * among eligible requests) that also writes their events to the outbox and the courses' counters,
 * and commits, so a batch is decided whole or not at all. One course's requests are decided by one
 * transaction at a time (its lock); a quiet term's hundreds of courses with a few requests each
 * share a transaction instead of paying for one each. Workers are woken at once by accepts (in
 * process) and by other replicas' NOTIFY; a timer wakes them when the hold releases requests; a
 * slow safety poll finds work nobody announced (a crashed replica's, say).
 */
import { trace } from "@opentelemetry/api";
import { transaction, type Sql } from "@coursemesh/shared/db.ts";
import type { Logger } from "@coursemesh/shared/logger.ts";
import { injectTraceContext, linkFromTraceparent, type Link } from "@coursemesh/shared/telemetry.ts";
import type { ChangeFeed } from "./changes.ts";
import { recordDecisions } from "./metrics.ts";
import { decideBatch, lockCourses, msUntilEligible, selectCoursesWithPending, type DecidedRequest } from "./store.ts";

export interface AllocatorOptions {
  sql: Sql;
  logger: Logger;
  feed: ChangeFeed;
  /** Most requests of one course decided per transaction. */
  batchSize: number;
  holdMs: number;
  workers: number;
  safetyPollMs: number;
  paused: boolean;
  /** Tells this process's outbox relay that batches committed events (they are written in SQL, not through `enqueue`). */
  wakeRelay: () => void;
  /** Asks this process's outbox relay to start no new read for this long (see `Relay.defer`). */
  deferRelay: (ms: number) => void;
  /** Told after each committed batch, e.g. to lower the accept path's count of pending requests. */
  onDecided?: (courseId: string, decided: number) => void;
}

/** Courses one transaction decides at most. */
const COURSES_PER_BATCH = 64;
/**
 * Least time between the starts of two batches of one course unless the first came back full. A
 * decision transaction costs Postgres about 2 ms of CPU whatever its size (planning the decision
 * statement, the lock, the commit), and under a steady 2,000 requests a second one course was
 * decided some 130 times a second, a few requests each, beside the accepts on the same two cores.
 * This bounds it to 100 a second per course, for at most 10 ms more before a decision; a
 * stampede's full batches still follow each other at once.
 */
const MIN_BATCH_INTERVAL_MS = 10;
/** How long a worker waits before trying a course another transaction holds. */
const LOCKED_RETRY_MS = 20;
/** Back-off after a failed batch (the database restarting, say). */
const FAILURE_RETRY_MS = 500;
/**
 * How long a full batch keeps the relay from starting new reads: a few batches' time, renewed by
 * each full batch; a short batch or the end of the drain wakes the relay at once.
 */
const RELAY_DEFER_MS = 250;

/** The allocation workers of one process. */
export class Allocator {
  /** Courses with work, in the order they got it. */
  private readonly dirty = new Set<string>();
  /** Courses a worker of this process is deciding. */
  private readonly busy = new Set<string>();
  private readonly wokenWhileBusy = new Set<string>();
  private readonly timers = new Map<string, ReturnType<typeof setTimeout>>();
  /** When each course's last batch started (performance.now()), for MIN_BATCH_INTERVAL_MS. */
  private readonly batchStartedAt = new Map<string, number>();
  private readonly running = new Set<Promise<void>>();
  private safetyPoll: ReturnType<typeof setInterval> | undefined;
  private paused: boolean;
  private stopping = false;
  /** Events were committed without waking the relay (see decideBatch). */
  private relayOwed = false;

  constructor(private readonly options: AllocatorOptions) {
    this.paused = options.paused;
  }

  /** Starts the safety poll and, unless paused, decides whatever is pending already. */
  start(): void {
    this.safetyPoll = setInterval(() => void this.scan(), this.options.safetyPollMs);
    if (this.paused) this.options.logger.warn("allocation is paused (ALLOCATOR_PAUSED): requests are accepted but not decided until SIGUSR2");
    void this.scan();
  }

  /** Resumes a paused allocator. */
  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.options.logger.info("allocation resumed");
    void this.scan();
  }

  /** Courses with new pending requests: decide them now. An empty list means "look everywhere". */
  wake(courseIds: Iterable<string>): void {
    let any = false;
    for (const id of courseIds) {
      any = true;
      if (this.busy.has(id)) this.wokenWhileBusy.add(id);
      else if (!this.tooSoon(id)) this.dirty.add(id);
    }
    if (!any) void this.scan();
    this.pump();
  }

  /** Stops taking batches and waits for the ones in flight to commit or roll back. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.safetyPoll);
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
    await Promise.allSettled([...this.running]);
  }

  private async scan(): Promise<void> {
    if (this.paused || this.stopping) return;
    try {
      this.wake(await selectCoursesWithPending(this.options.sql));
    } catch (error) {
      this.options.logger.warn({ err: error }, "could not look for pending requests; trying again at the next poll");
    }
  }

  private pump(): void {
    if (this.paused || this.stopping) return;
    while (this.running.size < this.options.workers && this.dirty.size > 0) {
      const courses: string[] = [];
      for (const courseId of this.dirty) {
        this.dirty.delete(courseId);
        if (this.busy.has(courseId)) this.wokenWhileBusy.add(courseId);
        else if (!this.tooSoon(courseId)) courses.push(courseId);
        if (courses.length === COURSES_PER_BATCH) break;
      }
      if (courses.length === 0) return;
      const run: Promise<void> = this.drain(courses).finally(() => {
        this.running.delete(run);
        this.pump();
      });
      this.running.add(run);
    }
  }

  /** Whether the course's last batch started too recently for another; if so, a timer brings it back when it may. */
  private tooSoon(courseId: string): boolean {
    const startedAt = this.batchStartedAt.get(courseId);
    if (startedAt === undefined) return false;
    const wait = startedAt + MIN_BATCH_INTERVAL_MS - performance.now();
    if (wait <= 0) {
      this.batchStartedAt.delete(courseId);
      return false;
    }
    if (!this.timers.has(courseId)) this.later(courseId, Math.ceil(wait));
    return true;
  }

  private later(courseId: string, ms: number): void {
    clearTimeout(this.timers.get(courseId));
    this.timers.set(
      courseId,
      setTimeout(() => {
        this.timers.delete(courseId);
        this.wake([courseId]);
      }, ms),
    );
  }

  /** Decides the courses' eligible requests batch after batch until none is left (or the hold keeps the rest). */
  private async drain(courses: string[]): Promise<void> {
    for (const courseId of courses) {
      this.busy.add(courseId);
      clearTimeout(this.timers.get(courseId));
      this.timers.delete(courseId);
    }
    let remaining = courses;
    try {
      while (remaining.length > 0 && !this.stopping && !this.paused) {
        const startedAt = performance.now();
        for (const courseId of remaining) {
          this.wokenWhileBusy.delete(courseId);
          this.batchStartedAt.set(courseId, startedAt);
        }
        const { locked, decided } = await this.decideBatch(remaining);
        // Another transaction (a replica's worker, a drop, a capacity change) holds these.
        for (const courseId of remaining) if (!locked.has(courseId)) this.later(courseId, LOCKED_RETRY_MS);
        // A full batch may have left more; a short one took everything eligible in its snapshot.
        // Without a hold, later accepts wake the course (here at once; from another replica by its
        // NOTIFY or its own retry of the lock); with one, the next request to come of age needs a timer.
        const full = (courseId: string) => (decided.get(courseId) ?? 0) >= this.options.batchSize;
        const again = [...locked].filter((courseId) => full(courseId) || this.wokenWhileBusy.has(courseId));
        if (this.options.holdMs > 0) {
          const short = [...locked].filter((courseId) => !again.includes(courseId));
          const waits = short.length ? await msUntilEligible(this.options.sql, short, this.options.holdMs) : new Map<string, number>();
          for (const [courseId, ms] of waits) {
            if (ms > 0) this.later(courseId, Math.ceil(ms) + 1);
            else if ((decided.get(courseId) ?? 0) > 0) again.push(courseId);
            // Eligible but nothing decided: committed after the snapshot; look again shortly.
            else this.later(courseId, LOCKED_RETRY_MS);
          }
        }
        // After a short batch, what came in meanwhile waits out the interval (a timer takes it).
        for (const courseId of again.filter((id) => !full(id))) {
          if (performance.now() - startedAt < MIN_BATCH_INTERVAL_MS) {
            this.wokenWhileBusy.delete(courseId);
            again.splice(again.indexOf(courseId), 1);
            this.later(courseId, Math.ceil(startedAt + MIN_BATCH_INTERVAL_MS - performance.now()));
          }
        }
        remaining = again;
      }
      if (this.paused) for (const courseId of remaining) this.dirty.add(courseId);
    } catch (error) {
      this.options.logger.error({ err: error, courses: remaining.length }, "allocation batch failed; retrying");
      if (!this.stopping) for (const courseId of remaining) this.later(courseId, FAILURE_RETRY_MS);
    } finally {
      for (const courseId of courses) {
        this.busy.delete(courseId);
        if (this.wokenWhileBusy.delete(courseId)) this.dirty.add(courseId);
      }
      if (this.relayOwed) {
        this.relayOwed = false;
        this.options.wakeRelay();
      }
    }
  }

  private async decideBatch(courseIds: string[]): Promise<{ locked: Set<string>; decided: Map<string, number> }> {
    const { sql, batchSize, holdMs } = this.options;
    const started = performance.now();
    const result = await transaction(sql, "allocator.allocate_batch", async (tx) => {
      const span = trace.getActiveSpan();
      const recording = span?.isRecording() ?? false;
      const { traceparent = null, tracestate = null } = injectTraceContext({});
      // Sent together: the decision runs after the locks (its snapshot sees every earlier decision)
      // and decides only the courses they got, without a round trip in between.
      const [locked, batch] = await Promise.all([
        lockCourses(tx, courseIds),
        decideBatch(tx, courseIds, { limit: batchSize, holdMs, withTraceparents: recording, traceparent, tracestate }),
      ]);
      if (recording) {
        span!.setAttribute("coursemesh.allocator.courses", locked.length);
        span!.setAttribute("coursemesh.allocator.batch_size", batch.requests.length);
        span!.setAttribute("coursemesh.allocator.enrolled", batch.requests.filter((request) => request.status === "ENROLLED").length);
        // The batch serves every request in it: link each one's Enroll trace.
        span!.addLinks(batch.requests.map((request) => linkFromTraceparent(request.traceparent)).filter((link): link is Link => link !== undefined));
      }
      return { locked, requests: batch.requests };
    });
    const decided = new Map<string, string[]>();
    for (const request of result.requests) {
      const ids = decided.get(request.courseId);
      if (ids) ids.push(request.id);
      else decided.set(request.courseId, [request.id]);
    }
    if (result.requests.length > 0) {
      this.options.logger.debug(
        { courses: result.locked.length, decided: result.requests.length, ms: Math.round((performance.now() - started) * 10) / 10 },
        "allocation batch committed",
      );
      // Decisions first: while a stampede keeps batches full, the relay is not woken after each one
      // but deferred (publishing competes with deciding for the same two cores; the relay bounds how
      // long it waits); it is woken by the batch that empties a queue or when the drain ends.
      if ([...decided.values()].some((ids) => ids.length < batchSize)) this.options.wakeRelay();
      else {
        this.relayOwed = true;
        this.options.deferRelay(RELAY_DEFER_MS);
      }
      recordDecisions(result.requests);
      for (const [courseId, ids] of decided) {
        this.options.onDecided?.(courseId, ids.length);
        this.options.feed.changed(courseId, ids);
      }
    }
    return { locked: new Set(result.locked), decided: new Map([...decided].map(([courseId, ids]) => [courseId, ids.length])) };
  }
}
