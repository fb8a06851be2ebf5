/**
 * Allocation: workers decide pending requests a batch at a time, one course per transaction. A
 * worker locks the course row (skipping it when another replica holds it), decides up to
 * ALLOCATOR_BATCH_SIZE requests with one set-based statement (fairness rule: score order among
 * eligible requests) that also writes their events to the outbox and the course's counters, and
 * commits, so a batch is decided whole or not at all. Workers are woken at once by accepts (in process) and by
 * other replicas' NOTIFY; a timer wakes them when the hold releases requests; a slow safety poll
 * finds work nobody announced (a crashed replica's, say).
 */
import { trace } from "@opentelemetry/api";
import { transaction, type Sql } from "@coursemesh/shared/db.ts";
import type { Logger } from "@coursemesh/shared/logger.ts";
import { injectTraceContext, linkFromTraceparent, type Link } from "@coursemesh/shared/telemetry.ts";
import type { ChangeFeed } from "./changes.ts";
import { recordDecisions } from "./metrics.ts";
import { decideBatch, lockCourse, msUntilEligible, selectCoursesWithPending, type DecidedRequest } from "./store.ts";

export interface AllocatorOptions {
  sql: Sql;
  logger: Logger;
  feed: ChangeFeed;
  batchSize: number;
  holdMs: number;
  workers: number;
  safetyPollMs: number;
  paused: boolean;
  /** Tells this process's outbox relay that a batch committed events (the batch writes them in SQL, not through `enqueue`). */
  wakeRelay: () => void;
  /** Told after each committed batch, e.g. to lower the accept path's count of pending requests. */
  onDecided?: (courseId: string, decided: readonly DecidedRequest[]) => void;
}

/** How long a worker waits before trying a course another transaction holds. */
const LOCKED_RETRY_MS = 20;
/** Back-off after a failed batch (the database restarting, say). */
const FAILURE_RETRY_MS = 500;

type BatchOutcome = { locked: false; decided: number } | { locked: true };

/** The allocation workers of one process. */
export class Allocator {
  private readonly dirty = new Set<string>();
  private readonly busy = new Set<string>();
  private readonly wokenWhileBusy = new Set<string>();
  private readonly timers = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly running = new Set<Promise<void>>();
  private safetyPoll: ReturnType<typeof setInterval> | undefined;
  private paused: boolean;
  private stopping = false;

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
      else this.dirty.add(id);
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
    for (const courseId of this.dirty) {
      if (this.running.size >= this.options.workers) return;
      this.dirty.delete(courseId);
      if (this.busy.has(courseId)) {
        this.wokenWhileBusy.add(courseId);
        continue;
      }
      const run: Promise<void> = this.drain(courseId).finally(() => {
        this.running.delete(run);
        this.pump();
      });
      this.running.add(run);
    }
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

  /** Decides a course's eligible requests batch after batch until none is left (or the hold keeps the rest). */
  private async drain(courseId: string): Promise<void> {
    this.busy.add(courseId);
    clearTimeout(this.timers.get(courseId));
    this.timers.delete(courseId);
    let emptyRounds = 0;
    try {
      while (!this.stopping && !this.paused) {
        this.wokenWhileBusy.delete(courseId);
        const outcome = await this.decideBatch(courseId);
        if (outcome.locked) {
          // Another transaction (a replica's worker, a drop, a capacity change) holds the course.
          this.later(courseId, LOCKED_RETRY_MS);
          return;
        }
        if (outcome.decided >= this.options.batchSize) continue;
        // A short batch took everything eligible in its snapshot. Without a hold, later accepts wake
        // this worker (or, from another replica, its NOTIFY or its own retry of the lock); with one,
        // the next request to come of age needs a timer.
        if (this.options.holdMs === 0) {
          if (this.wokenWhileBusy.has(courseId)) continue;
          return;
        }
        const waitMs = await msUntilEligible(this.options.sql, courseId, this.options.holdMs);
        if (waitMs === null) return;
        if (waitMs > 0) {
          this.later(courseId, Math.ceil(waitMs) + 1);
          return;
        }
        emptyRounds = outcome.decided === 0 ? emptyRounds + 1 : 0;
        if (emptyRounds >= 3) {
          this.later(courseId, LOCKED_RETRY_MS);
          return;
        }
      }
      if (this.paused) this.dirty.add(courseId);
    } catch (error) {
      this.options.logger.error({ err: error, course_id: courseId }, "allocation batch failed; retrying");
      if (!this.stopping) this.later(courseId, FAILURE_RETRY_MS);
    } finally {
      this.busy.delete(courseId);
      if (this.wokenWhileBusy.delete(courseId)) this.dirty.add(courseId);
    }
  }

  private async decideBatch(courseId: string): Promise<BatchOutcome> {
    const { sql, batchSize, holdMs } = this.options;
    const result = await transaction(sql, "allocator.allocate_batch", async (tx) => {
      const span = trace.getActiveSpan();
      const recording = span?.isRecording() ?? false;
      span?.setAttribute("coursemesh.allocator.course_id", courseId);
      const course = await lockCourse(tx, courseId, { skipLocked: true });
      if (!course) return null;
      const { traceparent = null, tracestate = null } = injectTraceContext({});
      const batch = await decideBatch(tx, course, { limit: batchSize, holdMs, withTraceparents: recording, traceparent, tracestate });
      if (recording && batch.requests.length > 0) {
        span!.setAttribute("coursemesh.allocator.batch_size", batch.requests.length);
        span!.setAttribute("coursemesh.allocator.enrolled", batch.requests.filter((request) => request.status === "ENROLLED").length);
        // The batch serves every request in it: link each one's Enroll trace.
        span!.addLinks(batch.requests.map((request) => linkFromTraceparent(request.traceparent)).filter((link): link is Link => link !== undefined));
      }
      return batch.requests;
    });
    if (result === null) return { locked: true };
    if (result.length > 0) {
      this.options.wakeRelay();
      recordDecisions(result);
      this.options.onDecided?.(courseId, result);
      this.options.feed.changed(
        courseId,
        result.map((request) => request.id),
      );
    }
    return { locked: false, decided: result.length };
  }


}
