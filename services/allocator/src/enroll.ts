/**
 * The accept path of Enroll: a durable insert, arrival stamped by the database's clock. Concurrent
 * calls are micro-batched: while one insert is in flight the next calls queue, and the next insert
 * takes them all (one statement, one commit), so the commit cost is shared by many callers without
 * a timer adding latency when the service is quiet. Idempotency: a key seen before with the same
 * payload answers with the original request; with another payload, ALREADY_EXISTS.
 */
import { alreadyExists, resourceExhausted, ServiceError, toServiceError } from "@coursemesh/shared/grpc/errors.ts";
import type { Sql } from "@coursemesh/shared/db.ts";
import type { Logger } from "@coursemesh/shared/logger.ts";
import { withSpan, linkFromTraceparent, type Link } from "@coursemesh/shared/telemetry.ts";
import { follow, type ChangeFeed, type RequestReader } from "./changes.ts";
import { courseNotFound, type CourseDirectory } from "./courses.ts";
import { acceptBatchSize, enrollmentRequests } from "./metrics.ts";
import { countPending, insertRequests, selectRequestsByKeys, type InsertedRequest, type NewRequest, type RequestRecord } from "./store.ts";

export interface EnrollInput {
  idempotencyKey: string;
  studentId: string;
  courseId: string;
  priority: number;
  /** The Enroll call's trace, stored so the batch that decides the request can link to it. */
  traceparent: string | null;
}

export interface AcceptorOptions {
  sql: Sql;
  logger: Logger;
  courses: CourseDirectory;
  feed: ChangeFeed;
  /** Wakes this process's allocation workers for these courses. */
  wake: (courseIds: string[]) => void;
  priorityStepMs: number;
  maxPending: number;
  batchSize: number;
}

interface Queued {
  input: EnrollInput;
  id: string;
  courseCode: string;
  resolve: (record: RequestRecord) => void;
  reject: (error: unknown) => void;
}

/** Inserts in flight at once; the rest of the calls queue for the next one. */
const MAX_INSERTS_IN_FLIGHT = 2;
/** How old a course's pending count may be before it is read again (other replicas accept and decide too). */
const PENDING_COUNT_TTL_MS = 1000;
/** …and before a refusal reads it again. */
const PENDING_COUNT_RECHECK_MS = 100;
/** RetryInfo of a QUEUE_FULL refusal. */
const QUEUE_FULL_RETRY_MS = 1000;

function samePayload(record: RequestRecord, input: EnrollInput): boolean {
  return record.studentId === input.studentId && record.courseId === input.courseId && record.priority === input.priority;
}

function keyReused(key: string): ServiceError {
  return alreadyExists(
    "IDEMPOTENCY_KEY_REUSED",
    `idempotency key "${key}" was already used for a different enrollment request; use a new key for a new request`,
    { metadata: { idempotency_key: key } },
  );
}

/** Accepts Enroll calls durably, many per commit. */
export class Acceptor {
  private queue: Queued[] = [];
  private inFlight = 0;
  private scheduled = false;
  private idle: (() => void)[] = [];
  /**
   * Undecided requests per course, for the ALLOCATOR_MAX_PENDING guard: the count last read from the
   * database, kept current with what this process wrote and decided since, plus calls still queued.
   */
  private readonly pending = new Map<string, { committed: number; queued: number; readAt: number; reading?: Promise<void> }>();

  constructor(private readonly options: AcceptorOptions) {}

  /** Accepts one request (or finds the original for a repeated key); the answer is PENDING or the original's state. */
  async accept(input: EnrollInput): Promise<RequestRecord> {
    const courseCode = await this.options.courses.code(input.courseId);
    if (courseCode === null) throw courseNotFound(input.courseId);
    if (!(await this.hasRoom(input.courseId))) {
      // A retry of a request accepted before the queue filled still gets its answer.
      const [existing] = await selectRequestsByKeys(this.options.sql, [input.idempotencyKey]);
      if (existing) return this.answerRepeat(existing, input);
      throw resourceExhausted(
        "QUEUE_FULL",
        `course ${courseCode} has ${this.options.maxPending} or more undecided requests; retry shortly`,
        { retryDelayMs: QUEUE_FULL_RETRY_MS, metadata: { course_id: input.courseId } },
      );
    }
    return new Promise<RequestRecord>((resolve, reject) => {
      this.queue.push({ input, id: Bun.randomUUIDv7(), courseCode, resolve, reject });
      this.schedule();
    });
  }

  /** Lowers a course's pending count after decisions committed here. */
  noteDecided(courseId: string, count: number): void {
    const known = this.pending.get(courseId);
    if (known) known.committed = Math.max(0, known.committed - count);
  }

  /** Resolves once every queued call has been written (shutdown: finish in-flight work). */
  drained(): Promise<void> {
    if (this.queue.length === 0 && this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }

  private counted(courseId: string) {
    let known = this.pending.get(courseId);
    if (!known) this.pending.set(courseId, (known = { committed: 0, queued: 0, readAt: 0 }));
    return known;
  }

  /** A queued call was written (`committed`) or answered without a new row. */
  private settle(courseId: string, committed: boolean): void {
    const known = this.counted(courseId);
    known.queued -= 1;
    if (committed) known.committed += 1;
  }

  private async hasRoom(courseId: string): Promise<boolean> {
    const known = this.counted(courseId);
    const age = Date.now() - known.readAt;
    const full = () => known.committed + known.queued >= this.options.maxPending;
    if (age > PENDING_COUNT_TTL_MS || (full() && age > PENDING_COUNT_RECHECK_MS)) {
      // One read per course at a time, shared by every call that needs it.
      known.reading ??= countPending(this.options.sql, courseId)
        .then((count) => {
          known.committed = count;
          known.readAt = Date.now();
        })
        .finally(() => (known.reading = undefined));
      await known.reading;
    }
    if (full()) return false;
    known.queued += 1;
    return true;
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    // Calls that arrive in the same turn of the event loop share the next insert.
    setImmediate(() => {
      this.scheduled = false;
      while (this.inFlight < MAX_INSERTS_IN_FLIGHT && this.queue.length > 0) {
        const batch = this.queue.splice(0, this.options.batchSize);
        this.inFlight += 1;
        void this.write(batch).finally(() => {
          this.inFlight -= 1;
          if (this.queue.length > 0) this.schedule();
          else if (this.inFlight === 0) for (const resolve of this.idle.splice(0)) resolve();
        });
      }
    });
  }

  private async write(batch: Queued[]): Promise<void> {
    // One row per key; repeats of a key inside the batch are answered like any repeat.
    const firstByKey = new Map<string, Queued>();
    const repeats: Queued[] = [];
    for (const call of batch) {
      if (firstByKey.has(call.input.idempotencyKey)) repeats.push(call);
      else firstByKey.set(call.input.idempotencyKey, call);
    }
    const firsts = [...firstByKey.values()];
    let written: Awaited<ReturnType<Acceptor["insert"]>>;
    try {
      written = await this.insert(firsts);
    } catch (error) {
      if (toServiceError(error).reason === "INTERNAL") this.options.logger.error({ err: error, calls: batch.length }, "accept insert failed");
      for (const call of batch) {
        this.settle(call.input.courseId, false);
        call.reject(error);
      }
      return;
    }
    const { inserted, failed } = written;
    const answered = new Map<string, RequestRecord>();
    const courses = new Set<string>();
    const unanswered = [...repeats];
    for (const call of firsts) {
      const row = inserted.get(call.id);
      if (!row) {
        if (!failed.has(call)) unanswered.push(call);
        this.settle(call.input.courseId, false);
        continue;
      }
      const record: RequestRecord = {
        id: call.id,
        idempotencyKey: call.input.idempotencyKey,
        courseId: call.input.courseId,
        courseCode: call.courseCode,
        studentId: call.input.studentId,
        priority: call.input.priority,
        status: "PENDING",
        reason: "",
        createdAt: row.createdAt,
        updatedAt: row.createdAt,
        queuePosition: row.queuePosition,
      };
      answered.set(call.input.idempotencyKey, record);
      courses.add(call.input.courseId);
      this.settle(call.input.courseId, true);
      call.resolve(record);
    }
    for (const call of repeats) this.settle(call.input.courseId, false);
    enrollmentRequests.inc({ status: "PENDING" }, answered.size);
    if (courses.size > 0) {
      this.options.wake([...courses]);
      this.options.feed.pendingAdded(courses);
    }
    if (unanswered.length > 0) await this.answerRepeats(unanswered, answered);
  }

  /** Answers calls whose key was already taken (by an earlier call or one in the same batch). */
  private async answerRepeats(calls: Queued[], known: Map<string, RequestRecord>): Promise<void> {
    try {
      const missing = [...new Set(calls.map((call) => call.input.idempotencyKey))].filter((key) => !known.has(key));
      for (const record of await selectRequestsByKeys(this.options.sql, missing)) known.set(record.idempotencyKey, record);
    } catch (error) {
      for (const call of calls) call.reject(error);
      return;
    }
    for (const call of calls) {
      const record = known.get(call.input.idempotencyKey);
      try {
        if (!record) throw new Error(`request with idempotency key ${call.input.idempotencyKey} vanished`);
        call.resolve(this.answerRepeat(record, call.input));
      } catch (error) {
        call.reject(error);
      }
    }
  }

  /**
   * Inserts the calls. A constraint failure (which validation should have prevented) fails only its
   * own call: the batch is retried one call at a time, and calls answered that way are returned.
   */
  private async insert(calls: Queued[]): Promise<{ inserted: Map<string, InsertedRequest>; failed: Set<Queued> }> {
    const run = (some: Queued[]) =>
      withSpan(
        "allocator.accept_batch",
        {
          attributes: { "coursemesh.allocator.batch_size": some.length },
          links: some.map((call) => linkFromTraceparent(call.input.traceparent)).filter((link): link is Link => link !== undefined),
        },
        () => insertRequests(this.options.sql, some.map((call): NewRequest => ({ id: call.id, ...call.input })), this.options.priorityStepMs),
      );
    acceptBatchSize.observe(calls.length);
    const failed = new Set<Queued>();
    try {
      return { inserted: new Map((await run(calls)).map((row) => [row.id, row])), failed };
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      if (calls.length === 1 || typeof code !== "string" || !code.startsWith("23")) throw error;
      const inserted = new Map<string, InsertedRequest>();
      for (const call of calls) {
        try {
          for (const row of await run([call])) inserted.set(row.id, row);
        } catch (single) {
          call.reject(single);
          failed.add(call);
        }
      }
      return { inserted, failed };
    }
  }

  private answerRepeat(record: RequestRecord, input: EnrollInput): RequestRecord {
    if (!samePayload(record, input)) throw keyReused(input.idempotencyKey);
    return record;
  }
}

/** Tracks Enroll calls waiting for their decision, so shutdown can answer them at once. */
export class DecisionWaits {
  private readonly active = new Set<AbortController>();

  constructor(
    private readonly feed: ChangeFeed,
    private readonly reader: RequestReader,
  ) {}

  /**
   * Waits until the request leaves PENDING, `untilMs` passes, the caller goes away or the process
   * stops; returns the latest state (still PENDING if undecided). A decision made by another
   * replica arrives through the change feed, and a last read at the end covers a missed notice.
   */
  async wait(record: RequestRecord, untilMs: number, signal: AbortSignal): Promise<RequestRecord> {
    if (record.status !== "PENDING") return record;
    const controller = new AbortController();
    const stop = () => controller.abort();
    signal.addEventListener("abort", stop, { once: true });
    this.active.add(controller);
    const timer = setTimeout(stop, Math.max(0, untilMs - Date.now()));
    let latest = record;
    try {
      for await (const row of follow(this.feed, this.reader, record.courseId, record.id, controller.signal)) {
        latest = row;
        if (row.status !== "PENDING") return row;
      }
      return signal.aborted ? latest : ((await this.reader.read(record.id)) ?? latest);
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", stop);
      this.active.delete(controller);
    }
  }

  /** Answers every waiting call with its current state (the first step of a graceful stop). */
  releaseAll(): void {
    for (const controller of this.active) controller.abort();
  }
}
