/**
 * coursemesh.scraper.v1.MonitorService: thin handlers, proto ⇄ domain. Monitors belong to their
 * creator; operators see and manage all of them. A monitor the caller cannot see is NOT_FOUND, never
 * PERMISSION_DENIED, so ids of other people's monitors reveal nothing.
 */
import {
  FetchMode,
  Isolation,
  MonitorHealth,
  MonitorMode,
  MonitorServiceService,
  type Monitor,
  type MonitorServiceServer,
  type SeatChange,
  type Seats,
} from "@coursemesh/proto/coursemesh/scraper/v1/scraper";
import { hasRole, type Principal } from "@coursemesh/shared/auth.ts";
import { transaction, type Sql } from "@coursemesh/shared/db.ts";
import { defineService, type Handlers, type ServiceRegistration } from "@coursemesh/shared/grpc/server.ts";
import { invalidArgument, notFound } from "@coursemesh/shared/grpc/errors.ts";
import type { Logger } from "@coursemesh/shared/logger.ts";
import { currentTraceparent } from "@coursemesh/shared/telemetry.ts";
import type { BrowserPool } from "./browser.ts";
import { extractorInput, type ExtractorInput } from "./extract.ts";
import type { MonitorFeed } from "./feed.ts";
import { decideDestination, type GuardPolicy } from "./guard-proxy.ts";
import { assertNotStopped, validateNewMonitor, type FetchModeName, type Health, type IsolationName, type Mode, type MonitorRecord, type ScheduleSettings } from "./monitors.ts";
import type { SubscriptionGateway } from "./notifier.ts";
import { decodePageToken, encodePageToken, isUuid, pageSize } from "./page-token.ts";
import type { Scheduler } from "./schedule.ts";
import type { SeatReading } from "./seats.ts";
import { deleteMonitor, insertMonitor, listMonitors, listSeatChanges, selectMonitor, updateMode, type SeatChangeRecord } from "./store.ts";
import { watchMonitors } from "./watch.ts";

export interface MonitorServiceDeps {
  sql: Sql;
  scheduler: Scheduler;
  feed: MonitorFeed;
  notifier: SubscriptionGateway;
  browser: BrowserPool | undefined;
  policy: GuardPolicy;
  settings: ScheduleSettings;
  logger: Logger;
  /** Aborted as the process starts shutting down: watch streams end so clients move to another replica. */
  stopping: AbortSignal;
}

const MODE_TO_PROTO: Record<Mode, MonitorMode> = {
  ACTIVE: MonitorMode.MONITOR_MODE_ACTIVE,
  PAUSED: MonitorMode.MONITOR_MODE_PAUSED,
  STOPPED: MonitorMode.MONITOR_MODE_STOPPED,
};
const HEALTH_TO_PROTO: Record<Health, MonitorHealth> = {
  PENDING: MonitorHealth.MONITOR_HEALTH_PENDING,
  HEALTHY: MonitorHealth.MONITOR_HEALTH_HEALTHY,
  STALE: MonitorHealth.MONITOR_HEALTH_STALE,
  ERROR: MonitorHealth.MONITOR_HEALTH_ERROR,
};

function seatsToProto(seats: SeatReading): Seats {
  return { open: seats.open, capacity: seats.capacity, waitlist: seats.waitlist, raw: seats.raw, parseError: seats.note ?? "" };
}

/** The proto form of a monitor. */
export function monitorToProto(m: MonitorRecord): Monitor {
  return {
    id: m.id,
    url: m.url,
    label: m.label,
    mode: MODE_TO_PROTO[m.mode],
    health: HEALTH_TO_PROTO[m.health],
    seats: m.seats ? seatsToProto(m.seats) : undefined,
    lastCheckedAt: m.lastCheckedAt ?? undefined,
    lastChangedAt: m.lastChangedAt ?? undefined,
    lastError: m.lastError,
    consecutiveFailures: m.consecutiveFailures,
    intervalSeconds: m.intervalSeconds,
    owner: m.owner,
    createdAt: m.createdAt,
    extractor: { kind: extractorInput(m.extractor) },
    fetchMode: m.fetchMode === "HTTP" ? FetchMode.FETCH_MODE_HTTP : FetchMode.FETCH_MODE_BROWSER,
    isolation: m.isolation === "MONITOR" ? Isolation.ISOLATION_MONITOR : Isolation.ISOLATION_HOST,
    lastSuccessAt: m.lastSuccessAt ?? undefined,
    nextCheckAt: m.mode === "ACTIVE" ? (m.nextCheckAt ?? undefined) : undefined,
    updatedAt: m.updatedAt,
  };
}

function changeToProto(c: SeatChangeRecord): SeatChange {
  return { id: c.id, monitorId: c.monitorId, previous: c.previous ? seatsToProto(c.previous) : undefined, current: seatsToProto(c.current), observedAt: c.observedAt, eventId: c.eventId ?? "" };
}

/** The owner filter for the caller: their own monitors, or everything for operators. */
function ownerScope(principal: Principal | null): string | null {
  if (hasRole(principal, "operator")) return null;
  return principal!.subject;
}

function requireId(id: string, field = "id"): string {
  if (!isUuid(id)) {
    throw invalidArgument("INVALID_ID", `${field} must be a monitor id (a UUID), got "${id}"`, { fieldViolations: [{ field, description: "must be a UUID" }] });
  }
  return id.toLowerCase();
}

const monitorNotFound = (id: string) => notFound("MONITOR_NOT_FOUND", `no monitor ${id} visible to you`, { metadata: { monitor_id: id } });

function fetchModeOf(value: FetchMode): FetchModeName {
  if (value === FetchMode.FETCH_MODE_HTTP) return "HTTP";
  if (value === FetchMode.FETCH_MODE_BROWSER || value === FetchMode.FETCH_MODE_UNSPECIFIED) return "BROWSER";
  throw invalidArgument("EXTRACTOR_INVALID", `fetch_mode ${value} is not BROWSER or HTTP`, { fieldViolations: [{ field: "fetch_mode", description: "must be BROWSER or HTTP" }] });
}

function isolationOf(value: Isolation): IsolationName {
  if (value === Isolation.ISOLATION_MONITOR) return "MONITOR";
  if (value === Isolation.ISOLATION_HOST || value === Isolation.ISOLATION_UNSPECIFIED) return "HOST";
  throw invalidArgument("EXTRACTOR_INVALID", `isolation ${value} is not HOST or MONITOR`, { fieldViolations: [{ field: "isolation", description: "must be HOST or MONITOR" }] });
}

function modeFilter(value: MonitorMode): Mode | null {
  switch (value) {
    case MonitorMode.MONITOR_MODE_ACTIVE:
      return "ACTIVE";
    case MonitorMode.MONITOR_MODE_PAUSED:
      return "PAUSED";
    case MonitorMode.MONITOR_MODE_STOPPED:
      return "STOPPED";
    default:
      return null;
  }
}

/** The MonitorService registration. */
export function monitorService(deps: MonitorServiceDeps): ServiceRegistration {
  const { sql, scheduler, feed, notifier, policy, settings, logger } = deps;

  /** Applies a mode change under the row lock; `apply` returns the new mode, or null for a no-op. */
  async function changeMode(id: string, principal: Principal | null, apply: (monitor: MonitorRecord) => Mode | null): Promise<MonitorRecord> {
    const monitorId = requireId(id);
    const updated = await transaction(sql, "scraper.change_mode", async (tx) => {
      const monitor = await selectMonitor(tx, monitorId, ownerScope(principal), true);
      if (!monitor) throw monitorNotFound(monitorId);
      const mode = apply(monitor);
      return mode === null ? monitor : updateMode(tx, monitorId, mode);
    });
    feed.touched({ id: monitorId });
    return updated;
  }

  const handlers: Handlers<MonitorServiceServer> = {
    async createMonitor(request, ctx) {
      const monitor = validateNewMonitor(
        {
          url: request.url,
          label: request.label,
          intervalSeconds: request.intervalSeconds,
          notifyEmails: request.notifyEmails,
          extractor: request.extractor?.kind as ExtractorInput | undefined,
          fetchMode: fetchModeOf(request.fetchMode),
          isolation: isolationOf(request.isolation),
        },
        settings,
      );
      const url = new URL(monitor.url);
      const decision = await decideDestination(url.hostname, Number(url.port || (url.protocol === "https:" ? 443 : 80)), policy);
      if (!decision.allowed) {
        throw invalidArgument("URL_NOT_ALLOWED", `url is not allowed: ${decision.reason}`, { fieldViolations: [{ field: "url", description: decision.reason }] });
      }
      const id = Bun.randomUUIDv7();
      // Subscriptions first: a crash after them leaves subscriptions to a monitor that never
      // existed (they receive nothing), never a monitor whose owner believes they are notified.
      const subscriptionIds = await notifier.subscribe(id, monitor.notifyEmails, ctx.principal?.token);
      let created: MonitorRecord;
      try {
        created = await insertMonitor(sql, { ...monitor, id, owner: ctx.principal!.subject, subscriptionIds, traceparent: currentTraceparent() ?? null });
      } catch (error) {
        await notifier.unsubscribe(subscriptionIds, ctx.principal?.token);
        throw error;
      }
      ctx.span.setAttribute("coursemesh.scraper.monitor_id", id);
      logger.info({ monitorId: id, host: created.host, fetchMode: created.fetchMode }, "monitor created");
      feed.touched({ id });
      scheduler.wake();
      return { monitor: monitorToProto(created), subscriptionIds };
    },

    async getMonitor(request, ctx) {
      const id = requireId(request.id);
      const monitor = await selectMonitor(sql, id, ownerScope(ctx.principal));
      if (!monitor) throw monitorNotFound(id);
      return { monitor: monitorToProto(monitor) };
    },

    async listMonitors(request, ctx) {
      const owner = ownerScope(ctx.principal);
      const mode = modeFilter(request.mode);
      const query = { list: "monitors", owner, mode };
      const limit = pageSize(request.pageSize);
      const beforeId = decodePageToken(request.pageToken, query);
      const rows = await listMonitors(sql, { owner, mode, beforeId, limit: limit + 1 });
      const page = rows.slice(0, limit);
      return { monitors: page.map(monitorToProto), nextPageToken: rows.length > limit ? encodePageToken(query, page.at(-1)!.id) : "" };
    },

    async pauseMonitor(request, ctx) {
      const monitor = await changeMode(request.id, ctx.principal, (m) => {
        assertNotStopped(m, "paused");
        return m.mode === "PAUSED" ? null : "PAUSED";
      });
      return { monitor: monitorToProto(monitor) };
    },

    async resumeMonitor(request, ctx) {
      const monitor = await changeMode(request.id, ctx.principal, (m) => {
        assertNotStopped(m, "resumed");
        return m.mode === "ACTIVE" ? null : "ACTIVE";
      });
      scheduler.wake();
      return { monitor: monitorToProto(monitor) };
    },

    async stopMonitor(request, ctx) {
      const monitor = await changeMode(request.id, ctx.principal, (m) => (m.mode === "STOPPED" ? null : "STOPPED"));
      return { monitor: monitorToProto(monitor) };
    },

    async deleteMonitor(request, ctx) {
      const id = requireId(request.id);
      const deleted = await deleteMonitor(sql, id, ownerScope(ctx.principal));
      if (!deleted) throw monitorNotFound(id);
      deps.browser?.forgetMonitor(id);
      feed.touched({ id });
      await notifier.unsubscribe(deleted.subscriptionIds, ctx.principal?.token);
      logger.info({ monitorId: id }, "monitor deleted");
      return {};
    },

    async checkNow(request, ctx) {
      const id = requireId(request.id);
      const monitor = await selectMonitor(sql, id, ownerScope(ctx.principal));
      if (!monitor) throw monitorNotFound(id);
      assertNotStopped(monitor, "checked");
      const result = await scheduler.checkNow(id, ctx.signal);
      // It may have been stopped while the check ran; the answer shows the monitor as it is now.
      return { monitor: monitorToProto(result.monitor), changed: result.changed };
    },

    async listSeatChanges(request, ctx) {
      const monitorId = requireId(request.monitorId, "monitor_id");
      const monitor = await selectMonitor(sql, monitorId, ownerScope(ctx.principal));
      if (!monitor) throw monitorNotFound(monitorId);
      const query = { list: "seat_changes", monitorId };
      const limit = pageSize(request.pageSize);
      const beforeId = decodePageToken(request.pageToken, query);
      const rows = await listSeatChanges(sql, monitorId, beforeId, limit + 1);
      const page = rows.slice(0, limit);
      return { seatChanges: page.map(changeToProto), nextPageToken: rows.length > limit ? encodePageToken(query, page.at(-1)!.id) : "" };
    },

    async *watchMonitors(request, ctx) {
      const ids = request.ids.map((id) => requireId(id, "ids"));
      for await (const update of watchMonitors({ sql, feed, ids, owner: ownerScope(ctx.principal), signal: AbortSignal.any([ctx.signal, deps.stopping]) })) {
        if (update.deletedId !== undefined) yield { monitor: undefined, change: undefined, deletedMonitorId: update.deletedId };
        else yield { monitor: monitorToProto(update.monitor), change: update.change ? changeToProto(update.change) : undefined, deletedMonitorId: "" };
      }
    },
  };

  return defineService<MonitorServiceServer>(MonitorServiceService, handlers, {
    createMonitor: "authenticated",
    getMonitor: "authenticated",
    listMonitors: "authenticated",
    pauseMonitor: "authenticated",
    resumeMonitor: "authenticated",
    stopMonitor: "authenticated",
    deleteMonitor: "authenticated",
    checkNow: "authenticated",
    listSeatChanges: "authenticated",
    watchMonitors: "authenticated",
  });
}
