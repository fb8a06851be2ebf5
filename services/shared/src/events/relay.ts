/**
 * The outbox relay: one per service (an advisory lock elects it; other replicas stand by), it
 * publishes outbox rows to JetStream in id order, pipelined, and deletes what JetStream acknowledged.
 *
 * Ordering. Rows of one aggregate get ids in commit order (see 00001_outbox.sql), and a read that
 * sees a later event of an aggregate also sees every earlier one. Reads continue after the highest
 * id read so far, and each also counts the rows at or below it: more than the relay itself still
 * holds means a transaction that took a lower id committed late, and those rows go out before the
 * new ones. The count starts at a floor below which no row can still appear: the highest id read
 * before the oldest transaction now running in the database began (ids rise with time, so any
 * transaction holding a lower id started earlier and has ended). Without the floor the count would
 * walk every row deleted since the last vacuum. On the wire, order survives failures because the relay publishes on a connection of its
 * own that never reconnects: nats.js would otherwise replay publishes buffered while it was
 * reconnecting, after earlier ones were lost with the old socket. A dead connection is closed, a new
 * one dialled, and publishing restarts from the oldest row not yet acknowledged; JetStream drops
 * the repeats by `Nats-Msg-Id`.
 *
 * The lock lives on a dedicated single-connection client rather than `sql.reserve()`: a reserved
 * postgres.js connection whose backend dies hangs its next query and throws from a timer, while a
 * dedicated client reports the close (we stop leading at once) and reconnects for the next attempt.
 */
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { Counter, Gauge } from "prom-client";
import postgres from "postgres";
import { advisoryKey, type Sql } from "../db.ts";
import type { Logger } from "../logger.ts";
import { registry } from "../metrics.ts";
import { onOutboxWrite } from "./outbox.ts";
import { createEventPublisher, storedTraceContext } from "./publish.ts";
import { Wakeup } from "../wakeup.ts";

export interface RelayOptions {
  /** The service's pool (its schema first on the search_path); the relay derives its lock connection from it. */
  sql: Sql;
  /** NATS servers; the relay dials its own connection (see the module comment). */
  natsServers: string[];
  /** Names spans (`<service>.publish`), the lock and the NOTIFY channel's log lines. */
  service: string;
  /** NATS_PREFIX of the deployment. */
  prefix: string;
  logger: Logger;
  /** Rows per read. */
  batchSize?: number;
  /**
   * Rows published in one go before the relay lets the rest of the process run (a read's rows go
   * out in slices of this many, in order, with a turn of the event loop between slices), so a big
   * read does not hold up a service's requests for the whole of its publishing.
   */
  publishSliceSize?: number;
  /** Publishes awaiting JetStream's ack at once. */
  maxInFlight?: number;
  /** Acknowledged rows deleted per statement. */
  deleteBatchSize?: number;
  /** How often an idle leader looks for rows nobody woke it for. */
  pollIntervalMs?: number;
  /** How often a standby tries to take the lock. */
  standbyRetryMs?: number;
  publishTimeoutMs?: number;
  /** A standby turns a burst of local writes into one NOTIFY at most this often. */
  notifyDebounceMs?: number;
  /** Called for every row JetStream acknowledged (benchmarks, tests). */
  onPublished?: (event: PublishedEvent) => void;
}

export interface PublishedEvent {
  eventId: string;
  subject: string;
  stream: string;
  seq: number;
  duplicate: boolean;
}

export interface Relay {
  /** Whether this replica holds the lock and publishes. */
  readonly leading: boolean;
  /** Look for new rows now (writers in this process do this through `enqueue`); ends a deferral. */
  wake(): void;
  /**
   * Start no new read for `ms` (publishes in flight still complete): a writer whose work must not
   * wait behind publishing — the allocator deciding a stampede on the same cores — goes first, and
   * its events follow. Calls extend the deferral, but never past MAX_DEFER_MS after the first of a
   * run (until the relay next finds the outbox empty), so no event waits longer for it.
   */
  defer(ms: number): void;
  /** Resolves when this replica starts leading. */
  whenLeading(): Promise<void>;
  /** Stops reading, waits for in-flight publishes, deletes what was acknowledged, releases the lock. */
  stop(): Promise<void>;
}

interface OutboxRow {
  id: number;
  eventId: string;
  subject: string;
  type: string;
  aggregateId: string | null;
  aggregateVersion: string | null;
  payload: string;
  traceparent: string | null;
  tracestate: string | null;
}

const publishedTotal = new Counter({
  name: "coursemesh_outbox_published_total",
  help: "Outbox rows JetStream acknowledged, by duplicate (already stored).",
  labelNames: ["duplicate"] as const,
  registers: [registry],
});
const restartsTotal = new Counter({
  name: "coursemesh_outbox_relay_restarts_total",
  help: "Times the relay restarted from the oldest unpublished row after an error.",
  registers: [registry],
});
const leaderGauge = new Gauge({
  name: "coursemesh_outbox_relay_leader",
  help: "1 while this process's relay holds the lock and publishes.",
  registers: [registry],
});

/** Each running relay's outbox, read from Postgres at scrape time (every replica sees the same table). */
const outboxesToMeasure = new Map<string, Sql>();
async function readOutboxes(): Promise<Map<string, { rows: number; oldestSeconds: number }>> {
  const read = new Map<string, { rows: number; oldestSeconds: number }>();
  for (const [service, sql] of outboxesToMeasure) {
    try {
      const [row] = await sql`select count(*)::int as rows, coalesce(extract(epoch from now() - min(created_at)), 0)::float8 as oldest from outbox`;
      read.set(service, { rows: row!.rows as number, oldestSeconds: row!.oldest as number });
    } catch {
      // The database is unreachable: /readyz says so; the scrape keeps the last values.
    }
  }
  return read;
}
new Gauge({
  name: "coursemesh_outbox_backlog",
  help: "Outbox rows not yet acknowledged by JetStream (read from Postgres at scrape time).",
  labelNames: ["service"] as const,
  registers: [registry],
  async collect() {
    for (const [service, { rows }] of await readOutboxes()) this.set({ service }, rows);
  },
});
new Gauge({
  name: "coursemesh_outbox_relay_lag_seconds",
  help: "Age of the oldest unpublished outbox row: how far the relay is behind (0 when the outbox is empty).",
  labelNames: ["service"] as const,
  registers: [registry],
  async collect() {
    for (const [service, { oldestSeconds }] of await readOutboxes()) this.set({ service }, oldestSeconds);
  },
});

/** The longest `defer` holds the relay back in a row (until it next finds the outbox empty). */
const MAX_DEFER_MS = 2000;

/** How often the relay asks for the oldest running transaction to raise its floor. */
const HORIZON_CHECK_MS = 100;

class LeadershipLost extends Error {
  override name = "LeadershipLost";
}

/** Starts the relay of the service whose schema `sql` uses; it leads or stands by until `stop()`. */
export async function startRelay(options: RelayOptions): Promise<Relay> {
  const { sql, logger, service, prefix } = options;
  const maxInFlight = Math.max(1, options.maxInFlight ?? 2048);
  const batchSize = Math.min(options.batchSize ?? 500, maxInFlight);
  const publishSliceSize = Math.max(1, options.publishSliceSize ?? 64);
  // Read the next batch once this few publishes are still awaiting their acks.
  const refillAt = maxInFlight - batchSize;
  const deleteBatchSize = options.deleteBatchSize ?? 500;
  const pollIntervalMs = options.pollIntervalMs ?? 1000;
  const standbyRetryMs = options.standbyRetryMs ?? 2000;
  const publishTimeoutMs = options.publishTimeoutMs ?? 5000;
  const notifyDebounceMs = options.notifyDebounceMs ?? 25;

  const [{ schema }] = (await sql`select current_schema() as schema`) as unknown as [{ schema: string }];
  outboxesToMeasure.set(service, sql);
  const lockKey = advisoryKey(`coursemesh.outbox.relay.${schema}`).toString();
  const channel = `coursemesh_outbox_${schema}`;
  const log = logger.child({ component: "outbox-relay", schema });

  // Bumped whenever the lock connection closes: a lock taken in an older generation is gone.
  let lockGeneration = 0;
  const lockSql = postgres({
    ...sql.options,
    max: 1,
    idle_timeout: null,
    max_lifetime: null,
    onclose: () => {
      lockGeneration++;
      activity.notify();
      interrupt.notify();
    },
  } as unknown as postgres.Options<{}>);

  let stopping = false;
  let leading = false;
  let lastWakeAt = 0;
  // Wakes the publishing loop: new rows, acks, a lost lock, stop.
  const activity = new Wakeup();
  // Ends the standby's and the backoff's waits early: only stop and a lost lock, never writes, so a
  // burst of writes during an outage does not turn into a burst of reconnects.
  const interrupt = new Wakeup();
  let leadingWaiters: (() => void)[] = [];
  let notifyTimer: ReturnType<typeof setTimeout> | undefined;

  // No new read before this (performance.now() ms); deferrals since the outbox was last empty began at deferringSince.
  let deferredUntil = 0;
  let deferringSince: number | undefined;

  function wake(): void {
    lastWakeAt = performance.now();
    deferredUntil = 0;
    activity.notify();
  }

  function defer(ms: number): void {
    const now = performance.now();
    deferringSince ??= now;
    deferredUntil = Math.max(deferredUntil, Math.min(now + ms, deferringSince + MAX_DEFER_MS));
  }

  const unsubscribeWrites = onOutboxWrite(() => {
    if (leading) return wake();
    // A standby's process wrote an event: tell the leader elsewhere, once per debounce window.
    notifyTimer ??= setTimeout(() => {
      notifyTimer = undefined;
      sql`select pg_notify(${channel}, '')`.catch((error) => log.warn({ err: error }, "outbox NOTIFY failed; the leader will find the rows when it polls"));
    }, notifyDebounceMs);
  });

  let unlisten: (() => Promise<void>) | undefined;
  try {
    ({ unlisten } = await sql.listen(channel, () => {
      if (leading) wake();
    }));
  } catch (error) {
    log.warn({ err: error }, "LISTEN failed; the relay relies on polling");
  }

  async function tryLock(): Promise<number | undefined> {
    const generation = lockGeneration;
    const [row] = await lockSql`select pg_try_advisory_lock(${lockKey}::bigint) as locked`;
    if (!row?.locked) return undefined;
    if (generation !== lockGeneration) {
      // The connection changed under the query: we cannot tell which one holds the lock, so let go.
      await lockSql`select pg_advisory_unlock(${lockKey}::bigint)`.catch(() => {});
      return undefined;
    }
    return generation;
  }

  async function lead(generation: number): Promise<void> {
    const lost = () => generation !== lockGeneration;
    let failures = 0;
    while (!stopping && !lost()) {
      let nc: NatsConnection;
      try {
        nc = await connect({
          servers: options.natsServers,
          name: `coursemesh-${service}-outbox-relay`,
          reconnect: false,
          timeout: 5000,
          pingInterval: 10_000,
          maxPingOut: 2,
          // A stack trace captured per publish costs more than the publish; errors here need none.
          noAsyncTraces: true,
        });
      } catch (error) {
        failures++;
        log.warn({ err: error, attempt: failures }, "outbox relay cannot reach NATS; rows wait in the outbox");
        await interrupt.wait(Math.min(250 * 2 ** Math.min(failures, 5), 5000));
        continue;
      }
      try {
        await pump(nc, lost);
        failures = 0;
      } catch (error) {
        if (error instanceof LeadershipLost) throw error;
        failures++;
        restartsTotal.inc();
        log.warn({ err: error, attempt: failures }, "outbox relay restarting from the oldest unpublished row");
      } finally {
        if (!nc.isClosed()) await nc.close().catch(() => {});
      }
      if (!stopping && !lost() && failures > 0) await interrupt.wait(Math.min(50 * 2 ** Math.min(failures, 7), 5000));
    }
    if (lost()) throw new LeadershipLost("the relay's lock connection closed");
  }

  /** One publishing session on one NATS connection; returns on stop, throws on any failure. */
  async function pump(nc: NatsConnection, lost: () => boolean): Promise<void> {
    const publisher = createEventPublisher(nc, { prefix, service, timeoutMs: publishTimeoutMs });
    // Highest id read in this session; rows above it are new, rows at or below it late or ours.
    let maxRead = 0;
    // No row at or below this id can still appear (see the module comment).
    let floor = 0;
    // Reads that raised maxRead, with the database clock (µs) after their snapshot: floor candidates.
    const readMarks: { readAt: number; maxRead: number }[] = [];
    let lastHorizonCheck = 0;
    // Ids read whose delete has not been issued: the rows at or below maxRead we expect to see.
    const retained = new Set<number>();
    let acked: number[] = [];
    let duplicates = 0;
    let unsettled = 0;
    let failure: unknown;
    const deletes = new Set<Promise<unknown>>();

    const fail = (error: unknown) => {
      failure ??= error;
      // Close at once: nothing queued behind a failed publish may reach the stream ahead of it.
      if (!nc.isClosed()) void nc.close().catch(() => {});
      activity.notify();
    };
    void nc.closed().then((error) => fail(error ?? new Error("NATS connection closed")));

    function issueDeletes(): void {
      if (acked.length === 0) return;
      const ids = acked;
      acked = [];
      publishedTotal.inc({ duplicate: "false" }, ids.length - duplicates);
      if (duplicates > 0) publishedTotal.inc({ duplicate: "true" }, duplicates);
      duplicates = 0;
      // The lock client has one connection, so this delete runs before any later read counts rows.
      for (const id of ids) retained.delete(id);
      const deletion = lockSql`delete from outbox where id = any(${ids}::bigint[])`.catch(fail);
      deletes.add(deletion);
      void deletion.finally(() => deletes.delete(deletion));
    }

    // Rows of one transaction share a traceparent; parse it once.
    let lastTraceparent: string | null = null;
    let lastTracestate: string | null = null;
    let lastParent = storedTraceContext(null, null);
    function parentOf(row: OutboxRow) {
      if (row.traceparent !== lastTraceparent || row.tracestate !== lastTracestate) {
        lastTraceparent = row.traceparent;
        lastTracestate = row.tracestate;
        lastParent = storedTraceContext(row.traceparent, row.tracestate);
      }
      return lastParent;
    }

    function publish(row: OutboxRow): void {
      unsettled++;
      publisher.publish(
        {
          eventId: row.eventId,
          subject: row.subject,
          type: row.type,
          aggregateId: row.aggregateId,
          aggregateVersion: row.aggregateVersion,
          body: row.payload,
        },
        parentOf(row),
      ).then(
        (ack) => {
          unsettled--;
          acked.push(row.id);
          if (ack.duplicate) duplicates++;
          options.onPublished?.({ eventId: row.eventId, subject: row.subject, stream: ack.stream, seq: ack.seq, duplicate: ack.duplicate });
          if (unsettled === 0 || unsettled === refillAt) activity.notify();
        },
        (error) => {
          unsettled--;
          fail(error);
        },
      );
    }

    /** The floor the oldest running transaction allows, or undefined when it cannot be known. */
    async function horizonFloor(): Promise<number | undefined> {
      lastHorizonCheck = performance.now();
      if (readMarks.length === 0) return undefined;
      // Autovacuum never writes the outbox; sessions of roles we may not inspect hide their start,
      // and then we cannot vouch for any floor.
      const [horizon] = await lockSql`
        select (extract(epoch from min(xact_start)) * 1000000)::bigint::text as oldest,
               count(*) filter (where query = '<insufficient privilege>')::int as hidden
        from pg_stat_activity
        where datname = current_database() and backend_type <> 'autovacuum worker'`;
      if (!horizon || horizon.hidden > 0 || horizon.oldest === null) return undefined;
      const oldest = Number(horizon.oldest);
      let candidate: number | undefined;
      while (readMarks.length > 0 && readMarks[0]!.readAt < oldest) candidate = readMarks.shift()!.maxRead;
      return candidate;
    }

    try {
      while (!stopping && failure === undefined && !lost()) {
        if (acked.length >= deleteBatchSize || (unsettled === 0 && acked.length > 0)) issueDeletes();
        if (unsettled > refillAt) {
          await activity.wait(publishTimeoutMs);
          continue;
        }
        const deferred = deferredUntil - performance.now();
        if (deferred > 0) {
          await activity.wait(deferred);
          continue;
        }
        const nextFloor = performance.now() - lastHorizonCheck >= HORIZON_CHECK_MS ? await horizonFloor() : undefined;
        const { rows, readAt, sawAllBelow } = await readBatch(floor, maxRead, retained, Math.min(batchSize, maxInFlight - unsettled));
        // Raised only now, and only if this read (after the horizon check) took every row below.
        if (nextFloor !== undefined && nextFloor > floor && sawAllBelow) floor = nextFloor;
        if (failure !== undefined || stopping || lost()) break;
        if (rows.length === 0) {
          deferringSince = undefined;
          issueDeletes();
          const recentlyWoken = performance.now() - lastWakeAt < 250;
          // A writer wakes us before its commit is visible, so look again soon after a wake-up.
          await activity.wait(unsettled > 0 ? publishTimeoutMs : recentlyWoken ? 10 : pollIntervalMs);
          continue;
        }
        const maxBefore = maxRead;
        for (let start = 0; start < rows.length; start += publishSliceSize) {
          // Between slices, whatever else the process serves gets its turn. Only published rows
          // move the cursor: a stop or a failure here leaves the rest in the outbox, read again later.
          if (start > 0) {
            await new Promise<void>((resolve) => setImmediate(resolve));
            if (failure !== undefined || stopping || lost()) break;
          }
          for (const row of rows.slice(start, start + publishSliceSize)) {
            retained.add(row.id);
            if (row.id > maxRead) maxRead = row.id;
            publish(row);
          }
        }
        if (maxRead > maxBefore) {
          readMarks.push({ readAt, maxRead });
          // Dropping the oldest marks only keeps the floor lower than it could be.
          if (readMarks.length > 10_000) readMarks.splice(0, readMarks.length - 10_000);
        }
      }
    } finally {
      if (lost()) fail(new LeadershipLost("the relay's lock connection closed"));
      // Let every publish settle (acked, failed, or rejected by a closed connection) and delete the acked.
      const deadline = performance.now() + publishTimeoutMs + 1000;
      while (unsettled > 0 && performance.now() < deadline) await activity.wait(50);
      publisher.close();
      if (!lost()) issueDeletes();
      await Promise.all(deletes);
    }
    if (lost()) throw new LeadershipLost("the relay's lock connection closed");
    if (failure !== undefined) throw failure;
  }

  async function readBatch(floor: number, maxRead: number, retained: Set<number>, limit: number): Promise<{ rows: OutboxRow[]; readAt: number; sawAllBelow: boolean }> {
    const result = await lockSql`
      with below as (
        select count(*)::int as n, (extract(epoch from clock_timestamp()) * 1000000)::bigint::text as read_at
        from outbox where id > ${floor} and id <= ${maxRead}
      )
      select below.n as rows_below, below.read_at, o.id::text as id, o.event_id::text as event_id, o.subject, o.event_type,
             o.aggregate_id, o.aggregate_version::text as aggregate_version, o.payload::text as payload,
             o.traceparent, o.tracestate
      from below left join lateral (
        select * from outbox where id > ${maxRead} order by id limit ${limit}
      ) o on true
      order by o.id`;
    const readAt = Number(result[0]?.read_at);
    const fresh = result.filter((r) => r.id !== null).map(toRow);
    const rowsBelow = (result[0]?.rows_below as number | undefined) ?? 0;
    let ours = 0;
    for (const id of retained) if (id > floor) ours++;
    if (rowsBelow === ours) return { rows: fresh, readAt, sawAllBelow: true };
    // Some transaction that took a lower id committed after we read past it: it goes out first.
    // (Fewer rows than we hold means someone else deleted ours; look anyway rather than guess.)
    const late = await lockSql`
      select id::text as id, event_id::text as event_id, subject, event_type, aggregate_id,
             aggregate_version::text as aggregate_version, payload::text as payload, traceparent, tracestate
      from outbox
      where id > ${floor} and id <= ${maxRead} and id <> all(${[...retained]}::bigint[])
      order by outbox.id
      limit ${limit}`;
    if (late.length > 0) log.debug({ late: late.length }, "outbox rows committed out of id order");
    // Within the window, and never a new row ahead of a late one still unread: unpublished fresh
    // rows are simply read again next time, since the cursor only moves over what is published.
    return { rows: [...late.map(toRow), ...fresh.slice(0, limit - late.length)], readAt, sawAllBelow: late.length < limit };
  }

  function toRow(r: postgres.Row): OutboxRow {
    return {
      id: Number(r.id),
      eventId: r.event_id,
      subject: r.subject,
      type: r.event_type,
      aggregateId: r.aggregate_id,
      aggregateVersion: r.aggregate_version,
      payload: r.payload,
      traceparent: r.traceparent,
      tracestate: r.tracestate,
    };
  }

  const running = (async () => {
    while (!stopping) {
      let generation: number | undefined;
      try {
        generation = await tryLock();
      } catch (error) {
        log.warn({ err: error }, "outbox relay cannot reach Postgres to take the lock");
      }
      if (generation === undefined) {
        await interrupt.wait(standbyRetryMs);
        continue;
      }
      leading = true;
      leaderGauge.set(1);
      log.info("outbox relay leading");
      for (const resolve of leadingWaiters) resolve();
      leadingWaiters = [];
      try {
        await lead(generation);
      } catch (error) {
        log.warn({ err: error }, "outbox relay stopped leading");
      } finally {
        leading = false;
        leaderGauge.set(0);
      }
      if (generation === lockGeneration) {
        await lockSql`select pg_advisory_unlock(${lockKey}::bigint)`.catch(() => {});
      }
      if (!stopping) await interrupt.wait(standbyRetryMs);
    }
  })();

  return {
    get leading() {
      return leading;
    },
    wake,
    defer,
    whenLeading() {
      return leading ? Promise.resolve() : new Promise<void>((resolve) => leadingWaiters.push(resolve));
    },
    async stop() {
      if (stopping) return running;
      stopping = true;
      if (outboxesToMeasure.get(service) === sql) outboxesToMeasure.delete(service);
      unsubscribeWrites();
      if (notifyTimer) clearTimeout(notifyTimer);
      activity.notify();
      interrupt.notify();
      await running;
      await unlisten?.().catch(() => {});
      await lockSql.end({ timeout: 5 });
      log.info("outbox relay stopped");
    },
  };
}
