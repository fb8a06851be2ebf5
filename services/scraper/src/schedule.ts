/**
 * The scheduler: every replica claims due monitors with a lease (a fencing token and a lease time
 * longer than a check's timeout), checks them within its concurrency limits and per-host cap and
 * gap, and records each result in one transaction — the state, the history row and the events —
 * only while its token still holds. A sweeper marks monitors STALE after 3 intervals with no good
 * check. Nothing lives only in memory: a replica that dies leaves leases that expire and are taken.
 */
import { Counter, Histogram } from "prom-client";
import { transaction, type Sql } from "@coursemesh/shared/db.ts";
import { enqueueMany } from "@coursemesh/shared/events/outbox.ts";
import type { OutboxEvent } from "@coursemesh/shared/events/outbox.ts";
import type { Logger } from "@coursemesh/shared/logger.ts";
import { registry } from "@coursemesh/shared/metrics.ts";
import { Wakeup } from "@coursemesh/shared/wakeup.ts";
import { linkFromTraceparent, SpanKind, SpanStatusCode, withSpan, type Link } from "@coursemesh/shared/telemetry.ts";
import type { CheckOutcome, Checker } from "./check.ts";
import { healthChangedEvent, seatsChangedEvent } from "./events.ts";
import type { MonitorFeed } from "./feed.ts";
import { HostLimiter } from "./host-limiter.ts";
import { applyCheck, STALE_AFTER_INTERVALS, type FetchModeName, type MonitorRecord, type ScheduleSettings } from "./monitors.ts";
import { claimDue, claimOne, insertSeatChange, lockLeased, markStale, releaseLease, saveCheck, saveQuietCheck, selectMonitor, type Leased } from "./store.ts";

export interface SchedulerOptions {
  sql: Sql;
  checker: Checker;
  feed: MonitorFeed;
  logger: Logger;
  /** This replica's name in lease_owner (for people reading the table). */
  replica: string;
  settings: ScheduleSettings;
  concurrency: Record<FetchModeName, number>;
  hostCap: number;
  hostGapMs: number;
  pollMs: number;
  sweepMs: number;
  checkTimeoutMs: number;
}

/** The result of recording a check. */
export interface Recorded {
  monitor: MonitorRecord;
  changed: boolean;
}

export interface Scheduler {
  /** Checks one monitor now (CheckNow): waits for a check in flight elsewhere to finish first. */
  checkNow(id: string, signal: AbortSignal): Promise<Recorded>;
  /** Looks for due monitors now (a monitor was created or resumed). */
  wake(): void;
  /** Stops claiming; lets checks in flight finish for `graceMs`, then aborts the rest and gives their leases back. */
  stop(graceMs: number): Promise<void>;
}

const checksTotal = new Counter({
  name: "coursemesh_scraper_checks_total",
  help: "Checks finished, by fetch mode and outcome (ok, failed, aborted, lease_lost).",
  labelNames: ["fetch_mode", "outcome"] as const,
  registers: [registry],
});
const checkSeconds = new Histogram({
  name: "coursemesh_scraper_check_seconds",
  help: "Time of one check (load, wait for the target, read), by fetch mode.",
  labelNames: ["fetch_mode"] as const,
  buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60],
  registers: [registry],
});
const seatChangesTotal = new Counter({ name: "coursemesh_scraper_seat_changes_total", help: "Seat changes recorded.", registers: [registry] });
const staleTotal = new Counter({ name: "coursemesh_scraper_marked_stale_total", help: "Monitors the sweeper marked STALE.", registers: [registry] });

/** Leases last a check's timeout plus this, so a result recorded at the deadline still holds its lease. */
export const LEASE_MARGIN_MS = 10_000;

/** What recording a check needs. */
export interface RecordContext {
  sql: Sql;
  feed: MonitorFeed;
  logger: Logger;
  settings: Pick<ScheduleSettings, "errorAfterFailures" | "maxBackoffSeconds">;
}

/**
 * Records a check's outcome under its lease: the monitor's state, the history row and the events
 * in one transaction, and only while the lease's token still holds (fencing); null when the lease
 * was lost, in which case nothing is written. An aborted check just gives its lease back.
 */
export async function recordOutcome(ctx: RecordContext, leased: Leased, outcome: CheckOutcome): Promise<Recorded | null> {
  const { sql, feed, logger, settings } = ctx;
  const { monitor, token } = leased;
  if (outcome.kind === "aborted") {
    // Our fault, not the page's: give the lease back and check again soon, holding nothing against it.
    await releaseLease(sql, monitor.id, token, 1000);
    return null;
  }
  // Most checks change nothing users care about: one statement, no row lock held across round trips.
  const quiet = applyCheck(monitor, outcome, settings);
  if (!quiet.change && !quiet.healthChange) {
    const saved = await saveQuietCheck(sql, monitor.id, token, monitor.version, quiet, outcome.observedAt);
    if (saved) {
      feed.touched({ id: monitor.id });
      return { monitor: saved, changed: false };
    }
  }
  const result = await transaction(sql, "scraper.record_check", async (tx) => {
    const current = await lockLeased(tx, monitor.id, token);
    if (!current) return null;
    const effect = applyCheck(current, outcome, settings);
    const events: OutboxEvent[] = [];
    let version = current.version;
    let changeId: string | undefined;
    if (effect.change) {
      changeId = Bun.randomUUIDv7();
      version++;
      // The change keeps its event's id, so the notifications of that event pair with it exactly.
      const change = { id: changeId, monitorId: current.id, previous: effect.change.previous, current: effect.change.current, observedAt: outcome.observedAt, version, eventId: Bun.randomUUIDv7() };
      await insertSeatChange(tx, change);
      events.push(seatsChangedEvent(current, change));
    }
    const saved = await saveCheck(tx, current.id, token, effect, outcome.observedAt);
    if (effect.healthChange) {
      version++;
      events.push(healthChangedEvent(saved, { previous: effect.healthChange.previous, current: effect.healthChange.current, version }));
    }
    await enqueueMany(tx, events);
    return { monitor: saved, changeId };
  });
  if (!result) {
    checksTotal.inc({ fetch_mode: monitor.fetchMode, outcome: "lease_lost" });
    logger.warn({ monitorId: monitor.id }, "check result discarded: the lease was lost (expired or taken over)");
    return null;
  }
  if (result.changeId) seatChangesTotal.inc();
  feed.touched({ id: monitor.id, changeId: result.changeId });
  return { monitor: result.monitor, changed: result.changeId !== undefined };
}

/** Starts the scheduler and sweeper loops of this replica. */
export function startScheduler(options: SchedulerOptions): Scheduler {
  const { sql, checker, feed, logger, settings } = options;
  const leaseMs = options.checkTimeoutMs + LEASE_MARGIN_MS;
  const limiter = new HostLimiter(options.hostCap, options.hostGapMs);
  const inFlight: Record<FetchModeName, number> = { BROWSER: 0, HTTP: 0 };
  const running = new Set<{ done: Promise<void>; abort: AbortController }>();
  const wakeup = new Wakeup();
  const sweepWakeup = new Wakeup();
  let stopping = false;

  /** Runs one leased check (host slot, span, check, record). */
  async function runLeased(leased: Leased, signal: AbortSignal): Promise<Recorded | null> {
    const { monitor } = leased;
    const release = await limiter.acquire(monitor.host);
    const link = linkFromTraceparent(monitor.traceparent, { "coursemesh.scraper.link": "monitor_created" });
    try {
      // Each check starts its own trace (linked to the monitor's creation); a seat change's event
      // and the notifier's email continue it.
      return await withSpan(
        "scraper.check",
        {
          kind: SpanKind.INTERNAL,
          root: true,
          links: link ? [link as Link] : [],
          attributes: { "coursemesh.scraper.monitor_id": monitor.id, "coursemesh.scraper.fetch_mode": monitor.fetchMode, "server.address": monitor.host },
        },
        async (span) => {
          const stopTimer = checkSeconds.startTimer({ fetch_mode: monitor.fetchMode });
          const outcome = await checker.check(
            { id: monitor.id, url: monitor.url, extractor: monitor.extractor, fetchMode: monitor.fetchMode, isolation: monitor.isolation },
            signal,
          );
          stopTimer();
          span.setAttribute("coursemesh.scraper.outcome", outcome.kind);
          if (outcome.kind !== "ok") {
            span.setAttribute("coursemesh.scraper.error", outcome.error);
            span.setStatus({ code: SpanStatusCode.ERROR, message: outcome.error });
          }
          checksTotal.inc({ fetch_mode: monitor.fetchMode, outcome: outcome.kind });
          const recorded = await recordOutcome({ sql, feed, logger, settings }, leased, outcome);
          if (recorded) span.setAttribute("coursemesh.scraper.changed", recorded.changed);
          return recorded;
        },
      );
    } finally {
      release();
    }
  }

  function launch(leased: Leased): void {
    const mode = leased.monitor.fetchMode;
    inFlight[mode]++;
    const abort = new AbortController();
    const entry = {
      abort,
      done: runLeased(leased, abort.signal)
        .catch((error) => {
          logger.error({ err: error, monitorId: leased.monitor.id }, "check could not be recorded; its lease expires and it is retried");
        })
        .then(() => {
          inFlight[mode]--;
          running.delete(entry);
          wakeup.notify();
        }),
    };
    running.add(entry);
  }

  const lastClaim: Record<FetchModeName, number> = { BROWSER: 0, HTTP: 0 };

  async function claimLoop(): Promise<void> {
    while (!stopping) {
      for (const mode of ["BROWSER", "HTTP"] as const) {
        const free = options.concurrency[mode] - inFlight[mode];
        if (free <= 0 || stopping) continue;
        // Under load, claim in batches (a quarter of the slots) rather than one query per finished check.
        if (free < Math.max(1, Math.floor(options.concurrency[mode] / 4)) && Date.now() - lastClaim[mode] < options.pollMs) continue;
        lastClaim[mode] = Date.now();
        try {
          const leased = await claimDue(sql, { fetchMode: mode, limit: free, replica: options.replica, leaseMs, hostRoom: (host) => limiter.room(host) });
          for (const item of leased) launch(item);
        } catch (error) {
          logger.warn({ err: error }, "could not claim due monitors; retrying");
        }
      }
      await wakeup.wait(options.pollMs);
    }
  }

  async function sweepLoop(): Promise<void> {
    while (!stopping) {
      try {
        const marked = await transaction(sql, "scraper.sweep_stale", async (tx) => {
          const stale = await markStale(tx, STALE_AFTER_INTERVALS, 500);
          await enqueueMany(
            tx,
            stale.map(({ monitor, previous }) => healthChangedEvent(monitor, { previous, current: "STALE", version: monitor.version })),
          );
          return stale;
        });
        for (const { monitor } of marked) feed.touched({ id: monitor.id });
        if (marked.length) {
          staleTotal.inc(marked.length);
          logger.info({ count: marked.length }, "monitors marked STALE (no good check for 3 intervals)");
        }
      } catch (error) {
        logger.warn({ err: error }, "stale sweep failed; retrying");
      }
      await sweepWakeup.wait(options.sweepMs);
    }
  }

  const loops = [claimLoop(), sweepLoop()];

  return {
    wake: () => wakeup.notify(),
    async checkNow(id, signal) {
      const deadline = Date.now() + leaseMs + 5000;
      let leased: Leased | null = null;
      // Someone else's check in flight ends within its lease; then the monitor is ours to check.
      while (!(leased = await claimOne(sql, id, options.replica, leaseMs))) {
        if (signal.aborted || Date.now() > deadline) {
          const monitor = await selectMonitor(sql, id, null);
          if (!monitor) throw new Error(`monitor ${id} disappeared`);
          return { monitor, changed: false };
        }
        await Bun.sleep(100);
      }
      const recorded = await runLeased(leased, signal);
      if (recorded) return recorded;
      const monitor = await selectMonitor(sql, id, null);
      if (!monitor) throw new Error(`monitor ${id} disappeared`);
      return { monitor, changed: false };
    },
    async stop(graceMs) {
      stopping = true;
      wakeup.notify();
      sweepWakeup.notify();
      const all = () => Promise.all([...running].map((r) => r.done));
      const finished = await Promise.race([all().then(() => true), Bun.sleep(graceMs).then(() => false)]);
      if (!finished) {
        for (const entry of running) entry.abort.abort(new Error("the scraper is shutting down"));
        await all();
      }
      await Promise.all(loops);
    },
  };
}
