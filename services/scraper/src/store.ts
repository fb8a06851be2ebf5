/**
 * The scraper's SQL: monitors, leases and seat changes. Times that schedule work come from the
 * database's clock (one clock for every replica).
 */
import type { Sql, Tx } from "@coursemesh/shared/db.ts";
import type { ExtractorSpec } from "./extract.ts";
import type { CheckEffect, FetchModeName, Health, Mode, MonitorRecord, NewMonitor } from "./monitors.ts";
import type { SeatReading } from "./seats.ts";

type Db = Sql | Tx;
type Row = Record<string, unknown>;

const date = (value: unknown) => (value === null || value === undefined ? null : new Date(value as string | Date));

/** Maps a monitors row to the domain record. */
function toRecord(row: Row): MonitorRecord {
  return {
    id: row.id as string,
    owner: row.owner as string,
    url: row.url as string,
    host: row.host as string,
    label: row.label as string,
    intervalSeconds: row.interval_seconds as number,
    extractor: row.extractor as ExtractorSpec,
    fetchMode: row.fetch_mode as FetchModeName,
    isolation: row.isolation as MonitorRecord["isolation"],
    mode: row.mode as Mode,
    health: row.health as Health,
    seats: (row.seats as SeatReading | null) ?? null,
    lastCheckedAt: date(row.last_checked_at),
    lastChangedAt: date(row.last_changed_at),
    lastSuccessAt: date(row.last_success_at),
    lastError: row.last_error as string,
    consecutiveFailures: row.consecutive_failures as number,
    nextCheckAt: date(row.next_check_at),
    version: Number(row.version),
    subscriptionIds: (row.subscription_ids as string[]) ?? [],
    traceparent: (row.traceparent as string | null) ?? null,
    createdAt: date(row.created_at)!,
    updatedAt: date(row.updated_at)!,
  };
}

/** Inserts a new ACTIVE monitor, due at once. */
export async function insertMonitor(db: Db, monitor: NewMonitor & { id: string; owner: string; subscriptionIds: string[]; traceparent: string | null }): Promise<MonitorRecord> {
  const [row] = await db`
    insert into monitors (id, owner, url, host, label, interval_seconds, extractor, fetch_mode, isolation, next_check_at, subscription_ids, traceparent)
    values (${monitor.id}, ${monitor.owner}, ${monitor.url}, ${monitor.host}, ${monitor.label}, ${monitor.intervalSeconds},
            ${db.json(monitor.extractor as never)}, ${monitor.fetchMode}, ${monitor.isolation}, clock_timestamp(),
            ${monitor.subscriptionIds}::text[], ${monitor.traceparent})
    returning *`;
  return toRecord(row!);
}

/** One monitor by id, or null. `owner` restricts it to that owner's monitors. */
export async function selectMonitor(db: Db, id: string, owner: string | null, lock = false): Promise<MonitorRecord | null> {
  const rows = lock
    ? await db`select * from monitors where id = ${id} and (${owner}::text is null or owner = ${owner}) for update`
    : await db`select * from monitors where id = ${id} and (${owner}::text is null or owner = ${owner})`;
  return rows[0] ? toRecord(rows[0]) : null;
}

/** Several monitors by id (those visible to `owner`, or all when null). */
export async function selectMonitors(db: Db, ids: string[], owner: string | null): Promise<MonitorRecord[]> {
  const rows = await db`select * from monitors where id = any(${ids}::uuid[]) and (${owner}::text is null or owner = ${owner})`;
  return rows.map(toRecord);
}

/** A page of monitors, newest first (UUIDv7 ids sort by creation). */
export async function listMonitors(db: Db, query: { owner: string | null; mode: Mode | null; beforeId: string | null; limit: number }): Promise<MonitorRecord[]> {
  const rows = await db`
    select * from monitors
    where (${query.owner}::text is null or owner = ${query.owner})
      and (${query.mode}::text is null or mode = ${query.mode})
      and (${query.beforeId}::uuid is null or id < ${query.beforeId}::uuid)
    order by id desc
    limit ${query.limit}`;
  return rows.map(toRecord);
}

/** Monitors visible to `owner` changed after `since` (the watch stream's safety poll). */
export async function selectUpdatedSince(db: Db, owner: string | null, since: Date, ids: string[] | null): Promise<MonitorRecord[]> {
  const rows = await db`
    select * from monitors
    where updated_at > ${since}
      and (${owner}::text is null or owner = ${owner})
      and (${ids}::uuid[] is null or id = any(${ids}::uuid[]))
    order by updated_at
    limit 1000`;
  return rows.map(toRecord);
}

/** Which of `ids` still exist (the watch stream's check for deletions it missed). */
export async function selectExistingMonitorIds(db: Db, ids: string[]): Promise<Set<string>> {
  const rows = await db`select id from monitors where id = any(${ids}::uuid[])`;
  return new Set(rows.map((row) => row.id as string));
}

/** Sets the mode (locking the row first is the caller's job); a fresh ACTIVE is due at once and restarts the STALE clock. */
export async function updateMode(db: Db, id: string, mode: Mode): Promise<MonitorRecord> {
  const [row] = await db`
    update monitors set
      mode = ${mode},
      next_check_at = case when ${mode} = 'ACTIVE' then clock_timestamp() else null end,
      active_since = case when ${mode} = 'ACTIVE' then clock_timestamp() else active_since end,
      -- A check in flight for the old intent no longer counts.
      lease_token = null, lease_until = null, lease_owner = null,
      version = version + 1,
      updated_at = clock_timestamp()
    where id = ${id}
    returning *`;
  return toRecord(row!);
}

/** Deletes a monitor and its history; returns it (for its subscriptions), or null if it was not visible. */
export async function deleteMonitor(db: Db, id: string, owner: string | null): Promise<MonitorRecord | null> {
  const [row] = await db`delete from monitors where id = ${id} and (${owner}::text is null or owner = ${owner}) returning *`;
  return row ? toRecord(row) : null;
}

/** A leased monitor: the record and the token its result must be written under. */
export interface Leased {
  monitor: MonitorRecord;
  token: string;
}

/**
 * Claims due monitors of one fetch mode for this replica: at most `limit`, and no more per host
 * than `hostRoom(host)` says this process can start now. Rows it skips stay unclaimed for the next
 * poll or another replica; rows another replica is claiming are skipped, not waited for.
 */
export async function claimDue(
  sql: Sql,
  options: { fetchMode: FetchModeName; limit: number; replica: string; leaseMs: number; hostRoom: (host: string) => number },
): Promise<Leased[]> {
  if (options.limit <= 0) return [];
  return (await sql.begin(async (tx) => {
    const candidates = await tx`
      select id, host from monitors
      where mode = 'ACTIVE' and fetch_mode = ${options.fetchMode} and next_check_at <= clock_timestamp()
        and (lease_until is null or lease_until < clock_timestamp())
      order by next_check_at
      limit ${options.limit * 4}
      for update skip locked`;
    const taken = new Map<string, number>();
    const chosen: string[] = [];
    for (const candidate of candidates) {
      if (chosen.length >= options.limit) break;
      const host = candidate.host as string;
      const used = taken.get(host) ?? 0;
      if (used >= options.hostRoom(host)) continue;
      taken.set(host, used + 1);
      chosen.push(candidate.id as string);
    }
    if (chosen.length === 0) return [];
    const rows = await tx`
      update monitors set lease_token = gen_random_uuid(), lease_until = clock_timestamp() + make_interval(secs => ${options.leaseMs / 1000}),
        lease_owner = ${options.replica}
      where id = any(${chosen}::uuid[])
      returning *`;
    return rows.map((row) => ({ monitor: toRecord(row), token: row.lease_token as string }));
  })) as Leased[];
}

/** Takes the lease of one monitor for CheckNow if no check holds it; null when one does. */
export async function claimOne(db: Db, id: string, replica: string, leaseMs: number): Promise<Leased | null> {
  const [row] = await db`
    update monitors set lease_token = gen_random_uuid(), lease_until = clock_timestamp() + make_interval(secs => ${leaseMs / 1000}), lease_owner = ${replica}
    where id = ${id} and mode <> 'STOPPED' and (lease_until is null or lease_until < clock_timestamp())
    returning *`;
  return row ? { monitor: toRecord(row), token: row.lease_token as string } : null;
}

/** Locks a leased monitor for writing its result; null when the lease was lost (expired or taken over). */
export async function lockLeased(tx: Tx, id: string, token: string): Promise<MonitorRecord | null> {
  const [row] = await tx`select * from monitors where id = ${id} and lease_token = ${token} and lease_until > clock_timestamp() for update`;
  return row ? toRecord(row) : null;
}

/** Writes a check's effect and releases the lease (the row is locked under that lease by the caller). */
export async function saveCheck(tx: Tx, id: string, token: string, effect: CheckEffect, checkedAt: Date): Promise<MonitorRecord> {
  const [row] = await tx`
    update monitors set
      health = ${effect.health},
      seats = ${effect.seats ? tx.json(effect.seats as never) : null},
      last_checked_at = ${checkedAt},
      last_success_at = ${effect.lastSuccessAt},
      last_changed_at = ${effect.lastChangedAt},
      last_error = ${effect.lastError},
      consecutive_failures = ${effect.consecutiveFailures},
      next_check_at = case when mode = 'ACTIVE' then clock_timestamp() + make_interval(secs => ${effect.nextCheckDelaySeconds}) else null end,
      lease_token = null, lease_until = null, lease_owner = null,
      version = ${effect.version},
      updated_at = clock_timestamp()
    where id = ${id} and lease_token = ${token}
    returning *`;
  return toRecord(row!);
}

/**
 * The common case in one statement: writes a check that changed nothing users care about, if the
 * lease still holds and nothing else changed the monitor since it was claimed (same version).
 * Null when either no longer holds; the caller then takes the locking path.
 */
export async function saveQuietCheck(db: Db, id: string, token: string, claimedVersion: number, effect: CheckEffect, checkedAt: Date): Promise<MonitorRecord | null> {
  const [row] = await db`
    update monitors set
      seats = ${effect.seats ? db.json(effect.seats as never) : null},
      last_checked_at = ${checkedAt},
      last_success_at = ${effect.lastSuccessAt},
      last_error = ${effect.lastError},
      consecutive_failures = ${effect.consecutiveFailures},
      next_check_at = case when mode = 'ACTIVE' then clock_timestamp() + make_interval(secs => ${effect.nextCheckDelaySeconds}) else null end,
      lease_token = null, lease_until = null, lease_owner = null,
      updated_at = clock_timestamp()
    where id = ${id} and lease_token = ${token} and lease_until > clock_timestamp() and version = ${claimedVersion}
    returning *`;
  return row ? toRecord(row) : null;
}

/** Gives a lease back without a result (the check was ours to blame: browser crash, shutdown); due again after `retryMs`. */
export async function releaseLease(db: Db, id: string, token: string, retryMs: number): Promise<void> {
  await db`
    update monitors set lease_token = null, lease_until = null, lease_owner = null,
      next_check_at = case when mode = 'ACTIVE' then clock_timestamp() + make_interval(secs => ${retryMs / 1000}) else null end
    where id = ${id} and lease_token = ${token}`;
}

/** A seat change as stored. */
export interface SeatChangeRecord {
  id: string;
  monitorId: string;
  previous: SeatReading | null;
  current: SeatReading;
  observedAt: Date;
  version: number;
  /** The seats.changed event's event_id; null for changes recorded before it was kept. */
  eventId: string | null;
}

function toChange(row: Row): SeatChangeRecord {
  return {
    id: row.id as string,
    monitorId: row.monitor_id as string,
    previous: (row.previous as SeatReading | null) ?? null,
    current: row.current as SeatReading,
    observedAt: date(row.observed_at)!,
    version: Number(row.version),
    eventId: (row.event_id as string | null) ?? null,
  };
}

/** Records a seat change in the history. */
export async function insertSeatChange(tx: Tx, change: SeatChangeRecord): Promise<void> {
  await tx`
    insert into seat_changes (id, monitor_id, previous, current, observed_at, version, event_id)
    values (${change.id}, ${change.monitorId}, ${change.previous ? tx.json(change.previous as never) : null},
            ${tx.json(change.current as never)}, ${change.observedAt}, ${change.version}, ${change.eventId})`;
}

/** A page of a monitor's seat changes, newest first. */
export async function listSeatChanges(db: Db, monitorId: string, beforeId: string | null, limit: number): Promise<SeatChangeRecord[]> {
  const rows = await db`
    select * from seat_changes
    where monitor_id = ${monitorId} and (${beforeId}::uuid is null or id < ${beforeId}::uuid)
    order by id desc
    limit ${limit}`;
  return rows.map(toChange);
}

/** One seat change by id. */
export async function selectSeatChange(db: Db, id: string): Promise<SeatChangeRecord | null> {
  const [row] = await db`select * from seat_changes where id = ${id}`;
  return row ? toChange(row) : null;
}

/**
 * Marks ACTIVE monitors STALE that had no good check for `intervals` intervals (counted from the
 * later of their last good check and their creation or resume); returns them with their previous
 * health. Rows locked by a check being recorded are left for the next sweep.
 */
export async function markStale(tx: Tx, intervals: number, limit: number): Promise<{ monitor: MonitorRecord; previous: Health }[]> {
  const rows = await tx`
    with stale as (
      select id, health as previous_health from monitors
      where mode = 'ACTIVE' and health in ('PENDING', 'HEALTHY')
        and greatest(coalesce(last_success_at, active_since), active_since) < clock_timestamp() - make_interval(secs => interval_seconds * ${intervals})
      limit ${limit}
      for update skip locked
    )
    update monitors m set health = 'STALE', version = m.version + 1, updated_at = clock_timestamp()
    from stale where m.id = stale.id
    returning m.*, stale.previous_health`;
  return rows.map((row) => ({ monitor: toRecord(row), previous: row.previous_health as Health }));
}

/** Monitors counted by mode and health, for the scrape-time gauge. */
export async function countMonitorsByModeAndHealth(db: Db): Promise<{ mode: Mode; health: Health; n: number }[]> {
  const rows = await db`select mode, health, count(*)::int as n from monitors group by mode, health`;
  return rows.map((row) => ({ mode: row.mode as Mode, health: row.health as Health, n: row.n as number }));
}
