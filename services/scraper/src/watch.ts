/**
 * WatchMonitors: the current state of each watched monitor first, then every update and deletion
 * from any replica. Updates arrive through the monitor feed (core NATS) and are re-read from
 * Postgres, so a watcher always sends committed state; a monitor it had sent that is no longer there
 * was deleted (its owner never changes, so it cannot merely have become invisible). A slow safety
 * poll covers feed messages lost in a crash, deletions included.
 */
import type { Sql } from "@coursemesh/shared/db.ts";
import { notFound } from "@coursemesh/shared/grpc/errors.ts";
import type { MonitorFeed, MonitorTouched } from "./feed.ts";
import type { MonitorRecord } from "./monitors.ts";
import { listMonitors, selectExistingMonitorIds, selectMonitor, selectMonitors, selectSeatChange, selectUpdatedSince, type SeatChangeRecord } from "./store.ts";

/** A monitor's state (with the seat change that caused it, if any), or the id of a deleted one. */
export type WatchUpdate = { monitor: MonitorRecord; change?: SeatChangeRecord; deletedId?: undefined } | { deletedId: string; monitor?: undefined; change?: undefined };

export interface WatchOptions {
  sql: Sql;
  feed: MonitorFeed;
  /** Empty: every monitor the caller can see. */
  ids: string[];
  /** The caller's own monitors only, unless null (operators). */
  owner: string | null;
  signal: AbortSignal;
  pollMs?: number;
}

/** Most monitors a watch of "everything I can see" starts with. */
const MAX_INITIAL = 1000;

/** Streams the watched monitors' states; ends when `signal` aborts. */
export async function* watchMonitors(options: WatchOptions): AsyncGenerator<WatchUpdate> {
  const { sql, feed, owner, signal } = options;
  const ids = [...new Set(options.ids)];
  const watched = ids.length ? new Set(ids) : null;
  const pending: MonitorTouched[] = [];
  let wake: (() => void) | undefined;
  const push = (update: MonitorTouched) => {
    if (watched && !watched.has(update.id)) return;
    pending.push(update);
    wake?.();
  };
  // Listen before reading the initial states, so nothing committed in between is missed.
  const unlisten = feed.listen(push);
  const onAbort = () => wake?.();
  signal.addEventListener("abort", onAbort);
  const lastSent = new Map<string, number>();
  const sentChanges = new Set<string>();
  let pollFrom = new Date(Date.now() - 1000);
  const poll = setInterval(() => {
    const since = pollFrom;
    pollFrom = new Date();
    void selectUpdatedSince(sql, owner, new Date(since.getTime() - 1000), ids.length ? ids : null)
      .then((rows) => rows.forEach((row) => push({ id: row.id })))
      .catch(() => {});
    const sent = [...lastSent.keys()];
    if (sent.length === 0) return;
    void selectExistingMonitorIds(sql, sent)
      .then((existing) => sent.filter((id) => !existing.has(id)).forEach((id) => push({ id })))
      .catch(() => {});
  }, options.pollMs ?? 5000);
  try {
    const initial = ids.length ? await selectMonitors(sql, ids, owner) : await listMonitors(sql, { owner, mode: null, beforeId: null, limit: MAX_INITIAL });
    if (ids.length) {
      const found = new Set(initial.map((m) => m.id));
      const missing = ids.filter((id) => !found.has(id));
      if (missing.length) throw notFound("MONITOR_NOT_FOUND", `no monitor ${missing.join(", ")} visible to you`, { metadata: { monitor_id: missing[0]! } });
    }
    for (const monitor of initial) {
      lastSent.set(monitor.id, monitor.updatedAt.getTime());
      yield { monitor };
    }
    while (!signal.aborted) {
      const next = pending.shift();
      if (!next) {
        await new Promise<void>((resolve) => {
          wake = resolve;
          if (signal.aborted || pending.length) resolve();
        });
        wake = undefined;
        continue;
      }
      const monitor = await selectMonitor(sql, next.id, owner);
      if (!monitor) {
        // Gone after this stream sent it: deleted (reported once; an id never sent means nothing here).
        if (lastSent.delete(next.id)) yield { deletedId: next.id };
        continue;
      }
      const fresh = monitor.updatedAt.getTime() > (lastSent.get(monitor.id) ?? 0);
      const change = next.changeId && !sentChanges.has(next.changeId) ? ((await selectSeatChange(sql, next.changeId)) ?? undefined) : undefined;
      // A change whose state was already sent (read together with an earlier update) still goes out once, with its change.
      if (!fresh && !change) continue;
      lastSent.set(monitor.id, Math.max(monitor.updatedAt.getTime(), lastSent.get(monitor.id) ?? 0));
      if (change) {
        sentChanges.add(change.id);
        if (sentChanges.size > 10_000) sentChanges.clear();
      }
      yield { monitor, change };
    }
  } finally {
    clearInterval(poll);
    unlisten();
    signal.removeEventListener("abort", onAbort);
  }
}
