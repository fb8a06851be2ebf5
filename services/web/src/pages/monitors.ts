/**
 * Monitors: add one from a BearTracks URL, watch seats, mode and health live, pause, resume, stop,
 * delete, check now, and read a monitor's history (seat changes and the notifications they caused).
 */
import type * as grpc from "@grpc/grpc-js";
import { bearer, unary } from "@coursemesh/shared/grpc/client.ts";
import { Notification, NotificationStatus } from "@coursemesh/proto/coursemesh/notifier/v1/notifier.ts";
import {
  FetchMode,
  MonitorHealth,
  MonitorMode,
  type Monitor,
  type SeatChange,
  type Seats,
  type WatchMonitorsResponse,
} from "@coursemesh/proto/coursemesh/scraper/v1/scraper.ts";
import type { Route, RouteContext } from "../app.ts";
import { fieldError, toWebError } from "../errors.ts";
import { csrfField, done, field, formMessage, refused, type FormState } from "../forms.ts";
import { badge, enumName, label, relativeTime } from "../format.ts";
import { html, type Html } from "../html.ts";
import { areaPage } from "../layout.ts";
import { wholeNumber } from "../numbers.ts";
import { htmlResponse, wantsJson } from "../respond.ts";
import { relayStreams } from "../live.ts";
import { allPages } from "../paging.ts";
import type { RouteDeps } from "../routes.ts";

const FORM = "monitor";
/** The API's field paths, as this form names them. */
const FIELD_MAP = {
  "extractor.beartracks.course_code": "course_code",
  "extractor.beartracks.section_label": "section",
  extractor: "course_code",
  interval_seconds: "interval_seconds",
  notify_emails: "notify_emails",
  label: "course_code",
};
/** Most monitor ids a "present" event lists; past it none is sent (an operator's whole fleet). */
const MAX_PRESENT = 10_000;
/** How long a monitors stream waits for the watch's first message before listing anyway. */
const PRESENT_FALLBACK_MS = 1000;
const ACTIONS = ["pause", "resume", "stop", "delete", "check"] as const;
type Action = (typeof ACTIONS)[number];

function modeOf(monitor: Monitor): string {
  return enumName(MonitorMode, monitor.mode, "MONITOR_MODE_");
}

function healthOf(monitor: Monitor): string {
  return enumName(MonitorHealth, monitor.health, "MONITOR_HEALTH_");
}

/** "3/30 open", with the waitlist when there is one; "—" before the first good check. */
export function seatsText(seats: Seats | undefined): string {
  if (!seats || (seats.open === undefined && seats.capacity === undefined)) return seats?.raw ? seats.raw : "—";
  const open = seats.open ?? "?";
  const text = seats.capacity === undefined ? `${open} open` : `${open}/${seats.capacity} open`;
  return seats.waitlist ? `${text}, waitlist ${seats.waitlist}` : text;
}

function modeBadge(monitor: Monitor): Html {
  const mode = modeOf(monitor);
  return badge(label(mode), mode === "ACTIVE" ? "ok" : mode === "PAUSED" ? "warn" : "idle");
}

function healthBadge(monitor: Monitor): Html {
  const health = healthOf(monitor);
  return badge(label(health), health === "HEALTHY" ? "ok" : health === "ERROR" ? "bad" : health === "STALE" ? "warn" : "idle");
}

function actionButton(monitor: Monitor, csrf: string, action: Action, text: string, tone = "secondary"): Html {
  return html`<form method="post" action="/monitors/${monitor.id}/${action}" data-enhance data-action="${action}"${
    action === "delete" ? html` data-confirm="Delete the monitor ${monitor.label} and its history?"` : ""
  }>${csrfField(csrf)}<button type="submit" class="${tone}" aria-label="${label(action === "check" ? "check now" : action)} ${monitor.label}">${text}</button></form>`;
}

/** One table row; the live stream sends the same markup when the monitor changes. */
export function monitorRow(monitor: Monitor, csrf: string): Html {
  const mode = modeOf(monitor);
  return html`<tr id="monitor-${monitor.id}" data-monitor="${monitor.id}" data-mode="${mode}" data-health="${healthOf(monitor)}">
  <td data-label="Monitor"><div><strong>${monitor.label}</strong><br><a class="muted" href="${monitor.url}" rel="noreferrer noopener" target="_blank">${shortUrl(monitor.url)}</a></div></td>
  <td data-label="Seats" class="num"><span class="seats" data-seats>${seatsText(monitor.seats)}</span></td>
  <td data-label="Mode">${modeBadge(monitor)}</td>
  <td data-label="Health">${healthBadge(monitor)}</td>
  <td data-label="Last checked">${relativeTime(monitor.lastCheckedAt)}</td>
  <td data-label="Last changed">${relativeTime(monitor.lastChangedAt)}</td>
  <td data-label="Last error">${monitor.lastError ? html`<span class="error">${monitor.lastError}</span>` : html`<span class="muted">—</span>`}</td>
  <td data-label="Actions"><div class="actions">
    ${mode === "ACTIVE" ? actionButton(monitor, csrf, "pause", "Pause") : ""}
    ${mode === "PAUSED" ? actionButton(monitor, csrf, "resume", "Resume") : ""}
    ${mode !== "STOPPED" ? actionButton(monitor, csrf, "check", "Check now") : ""}
    <a class="button secondary" href="/monitors/${monitor.id}/history" data-history="${monitor.id}">History</a>
    ${mode !== "STOPPED" ? actionButton(monitor, csrf, "stop", "Stop", "danger") : ""}
    ${actionButton(monitor, csrf, "delete", "Delete", "danger")}
  </div></td>
</tr>`;
}

function shortUrl(url: string): string {
  try {
    const parsed = new URL(url);
    const text = parsed.host + parsed.pathname;
    return text.length > 48 ? `${text.slice(0, 47)}…` : text;
  } catch {
    return url;
  }
}

function monitorForm(csrf: string, state?: FormState): Html {
  return html`<section class="card" aria-labelledby="add-monitor">
  <h2 id="add-monitor">Add a monitor</h2>
  <form method="post" action="/monitors" data-enhance data-action="create" novalidate>
    ${csrfField(csrf)}
    <div class="grid">
      ${field({ form: FORM, name: "url", label: "Schedule page URL", type: "url", required: true, wide: true, state, help: "The BearTracks class schedule page that lists the section." })}
      ${field({ form: FORM, name: "course_code", label: "Course code", required: true, state, help: "As the page prints it, e.g. CMPUT 201." })}
      ${field({ form: FORM, name: "section", label: "Section", required: true, state, help: "e.g. LEC A1" })}
      ${field({ form: FORM, name: "interval_seconds", label: "Check every (seconds)", type: "number", value: "300", state, attrs: html`min="1" step="1"` })}
      ${field({ form: FORM, name: "notify_emails", label: "Email me at", type: "text", state, help: "Addresses to notify, separated by commas; leave empty for none.", attrs: html`autocomplete="email"` })}
    </div>
    ${formMessage(state)}
    <button type="submit">Add monitor</button>
  </form>
</section>`;
}

function monitorsPage(ctx: RouteContext, monitors: Monitor[], state?: FormState, loadError?: string): Html {
  return areaPage(ctx, "monitors", "Monitors", html`<h1>Seat monitors</h1>
${monitorForm(ctx.csrf, state)}
<section class="card" aria-labelledby="your-monitors">
  <h2 id="your-monitors">Your monitors</h2>
  <p id="live-status" class="muted" aria-live="polite" data-live-status>${loadError ?? ""}</p>
  <table class="responsive" data-live="/live/monitors">
    <thead><tr><th scope="col">Monitor</th><th scope="col">Seats</th><th scope="col">Mode</th><th scope="col">Health</th><th scope="col">Last checked</th><th scope="col">Last changed</th><th scope="col">Last error</th><th scope="col">Actions</th></tr></thead>
    <tbody id="monitor-rows">${monitors.map((m) => monitorRow(m, ctx.csrf))}</tbody>
  </table>
  <p class="muted" data-empty${monitors.length ? html` hidden` : ""}>No monitors yet. Add one above.</p>
</section>
<dialog id="history-dialog" aria-labelledby="history-title">
  <header><h2 id="history-title">History</h2><button type="button" class="secondary" data-close-dialog>Close</button></header>
  <div class="dialog-body" data-dialog-body></div>
</dialog>`);
}

/**
 * Each change with the notifications its seats.changed event caused: paired by the event's id. A
 * change recorded before the scraper kept that id gets the notifications that followed it (until
 * the next change) instead.
 */
export function historyBody(monitor: Monitor, changes: SeatChange[], notifications: Notification[]): Html {
  const byTime = [...changes].sort((a, b) => (b.observedAt?.getTime() ?? 0) - (a.observedAt?.getTime() ?? 0));
  const seatNotifications = notifications.filter((n) => n.eventType === "seats.changed");
  const rows = byTime.map((change, i) => {
    const from = change.observedAt?.getTime() ?? 0;
    const until = i === 0 ? Infinity : (byTime[i - 1]!.observedAt?.getTime() ?? Infinity);
    const caused = change.eventId
      ? seatNotifications.filter((n) => n.eventId === change.eventId)
      : seatNotifications.filter((n) => (n.createdAt?.getTime() ?? 0) >= from - 1000 && (n.createdAt?.getTime() ?? 0) < until);
    return html`<li class="job">
  <strong>${seatsText(change.previous)} → ${seatsText(change.current)}</strong> · ${relativeTime(change.observedAt)}
  ${
    caused.length
      ? html`<ul>${caused.map(
          (n) =>
            html`<li>${label(enumName(NotificationStatus, n.status, "NOTIFICATION_STATUS_"))}: ${n.subject || n.eventType} to ${n.recipient}${
              n.lastError ? html` <span class="error">(${n.lastError})</span>` : ""
            }</li>`,
        )}</ul>`
      : html`<p class="muted">No notification.</p>`
  }
</li>`;
  });
  const others = notifications.filter((n) => n.eventType !== "seats.changed");
  return html`<p><strong>${monitor.label}</strong> · ${seatsText(monitor.seats)} · ${label(modeOf(monitor))}, ${label(healthOf(monitor))}</p>
<h3>Seat changes</h3>
${changes.length ? html`<ol class="history" data-history-list>${rows}</ol>` : html`<p class="muted">No seat changes recorded yet.</p>`}
${
  others.length
    ? html`<h3>Other notifications</h3><ul>${others.map(
        (n) => html`<li>${relativeTime(n.createdAt)} · ${n.subject || n.eventType} to ${n.recipient} (${label(enumName(NotificationStatus, n.status, "NOTIFICATION_STATUS_"))})</li>`,
      )}</ul>`
    : ""
}`;
}

function emailsFrom(raw: string): string[] {
  return raw
    .split(/[,;\s]+/)
    .map((address) => address.trim())
    .filter(Boolean);
}

/** The monitors area's routes. */
export function monitorRoutes({ backends, live }: RouteDeps): Route[] {
  const scraper = backends.monitors;

  async function list(ctx: RouteContext): Promise<{ monitors: Monitor[]; error?: string }> {
    try {
      const response = await unary(scraper.listMonitors.bind(scraper), { mode: MonitorMode.MONITOR_MODE_UNSPECIFIED, pageSize: 200, pageToken: "" }, { token: ctx.token });
      return { monitors: response.monitors };
    } catch (error) {
      return { monitors: [], error: toWebError(error).message };
    }
  }

  async function render(ctx: RouteContext): Promise<Response> {
    const { monitors, error } = await list(ctx);
    return htmlResponse(monitorsPage(ctx, monitors, undefined, error));
  }

  const rerender = (ctx: RouteContext) => (state: FormState) => list(ctx).then(({ monitors }) => monitorsPage(ctx, monitors, state));

  async function act(ctx: RouteContext): Promise<Response> {
    const action = ctx.params.action as Action;
    if (!ACTIONS.includes(action)) return new Response("not found", { status: 404 });
    const id = ctx.params.id!;
    try {
      let monitor: Monitor | undefined;
      if (action === "pause") monitor = (await unary(scraper.pauseMonitor.bind(scraper), { id }, { token: ctx.token })).monitor;
      if (action === "resume") monitor = (await unary(scraper.resumeMonitor.bind(scraper), { id }, { token: ctx.token })).monitor;
      if (action === "stop") monitor = (await unary(scraper.stopMonitor.bind(scraper), { id }, { token: ctx.token })).monitor;
      if (action === "check") monitor = (await unary(scraper.checkNow.bind(scraper), { id }, { token: ctx.token })).monitor;
      if (action === "delete") await unary(scraper.deleteMonitor.bind(scraper), { id }, { token: ctx.token });
      return done(ctx, "/monitors", { id, deleted: action === "delete", html: monitor ? monitorRow(monitor, ctx.csrf).value : undefined });
    } catch (error) {
      return refused(ctx, toWebError(error), rerender(ctx));
    }
  }

  return [
    { method: "GET", path: "/monitors", handler: (ctx) => render(ctx) },
    {
      method: "POST",
      path: "/monitors",
      async handler(ctx) {
        const value = (name: string) => String(ctx.form?.get(name) ?? "").trim();
        const courseCode = value("course_code");
        const section = value("section");
        const interval = wholeNumber(value("interval_seconds"));
        if (interval === "invalid") {
          return refused(ctx, fieldError("interval_seconds", "must be a whole number of seconds"), rerender(ctx));
        }
        try {
          const response = await unary(
            scraper.createMonitor.bind(scraper),
            {
              url: value("url"),
              label: [courseCode, section].filter(Boolean).join(" "),
              // An empty interval is the service's default (0); any number is the service's to judge.
              intervalSeconds: interval ?? 0,
              notifyEmails: emailsFrom(value("notify_emails")),
              extractor: { kind: { $case: "beartracks", value: { courseCode, sectionLabel: section } } },
              fetchMode: FetchMode.FETCH_MODE_BROWSER,
              isolation: 0,
            },
            { token: ctx.token },
          );
          return done(ctx, "/monitors", { id: response.monitor!.id, html: monitorRow(response.monitor!, ctx.csrf).value });
        } catch (error) {
          return refused(ctx, toWebError(error, FIELD_MAP), rerender(ctx));
        }
      },
    },
    { method: "POST", path: "/monitors/:id/:action", handler: act },
    {
      method: "GET",
      path: "/monitors/:id/history",
      async handler(ctx) {
        const id = ctx.params.id!;
        try {
          const [monitor, changes, notifications] = await Promise.all([
            unary(scraper.getMonitor.bind(scraper), { id }, { token: ctx.token }),
            unary(scraper.listSeatChanges.bind(scraper), { monitorId: id, pageSize: 50, pageToken: "" }, { token: ctx.token }),
            unary(backends.notifications.listNotifications.bind(backends.notifications), { ...emptyNotificationQuery(), monitorId: id, pageSize: 200 }, { token: ctx.token }).catch(
              () => ({ notifications: [] as Notification[] }),
            ),
          ]);
          const body = historyBody(monitor.monitor!, changes.seatChanges, notifications.notifications);
          if (wantsJson(ctx.request) || ctx.url.searchParams.has("fragment")) return htmlResponse(body);
          return htmlResponse(
            areaPage(ctx, "monitors", `History of ${monitor.monitor!.label}`, html`<h1>History</h1><section class="card">${body}</section><p><a href="/monitors">Back to monitors</a></p>`),
          );
        } catch (error) {
          const failure = toWebError(error);
          return htmlResponse(html`<p class="error" role="alert">${failure.message}</p>`, { status: failure.status });
        }
      },
    },
    {
      method: "GET",
      path: "/live/monitors",
      handler(ctx) {
        return live.open(ctx.principal.subject, (sink) => {
          const call: grpc.ClientReadableStream<WatchMonitorsResponse> = scraper.watchMonitors({ ids: [] }, bearer(ctx.token));
          // The watch only reports deletions of monitors it has sent, so a monitor deleted before it
          // started would keep its row: once the watch is listening (its first message, the initial
          // states; or a second for a user with none), the monitors that exist are listed and sent as
          // "present", and the page drops the rows it showed before this stream that are not among them.
          let listed = false;
          const present = () => {
            if (listed || sink.signal.aborted) return;
            listed = true;
            clearTimeout(fallback);
            void allPages(async (pageToken) => {
              const page = await unary(scraper.listMonitors.bind(scraper), { mode: MonitorMode.MONITOR_MODE_UNSPECIFIED, pageSize: 1000, pageToken }, { token: ctx.token });
              return { items: page.monitors.map((m) => m.id), next: page.nextPageToken };
            }, MAX_PRESENT)
              // A list cut short cannot tell what is gone.
              .then((ids) => ids.length < MAX_PRESENT && sink.send("present", { kind: "monitor", ids }))
              .catch(() => {});
          };
          const fallback = setTimeout(present, PRESENT_FALLBACK_MS);
          // WatchMonitors only ends when a replica stops: the browser reconnects.
          const stop = relayStreams(
            sink,
            [call],
            ({ monitor, change, deletedMonitorId }) => {
              // Deleted anywhere (another tab, another user's operator, grpcurl): the row goes.
              if (deletedMonitorId) return sink.send("monitor", { id: deletedMonitorId, deleted: true });
              if (!monitor) return;
              sink.send("monitor", {
                id: monitor.id,
                html: monitorRow(monitor, ctx.csrf).value,
                change: change ? { label: monitor.label, from: seatsText(change.previous), to: seatsText(change.current) } : undefined,
              });
            },
            { endIsFinal: false },
          );
          call.once("data", present);
          return () => {
            clearTimeout(fallback);
            stop();
          };
        });
      },
    },
  ];
}

function emptyNotificationQuery() {
  return { monitorId: "", courseId: "", studentId: "", recipient: "", pageSize: 0, pageToken: "", jobId: "", status: NotificationStatus.NOTIFICATION_STATUS_UNSPECIFIED, eventId: "" };
}
