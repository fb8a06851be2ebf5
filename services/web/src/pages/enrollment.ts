/**
 * Enrollment (students, and registrars acting for them): enroll in a course, see the decision and
 * the waitlist position arrive live (WatchRequest), drop.
 */
import { randomUUID } from "node:crypto";
import type * as grpc from "@grpc/grpc-js";
import { bearer, unary } from "@coursemesh/shared/grpc/client.ts";
import { EnrollmentStatus, type Course, type Enrollment, type WatchRequestResponse } from "@coursemesh/proto/coursemesh/allocator/v1/allocator.ts";
import type { Route, RouteContext } from "../app.ts";
import { fieldError, toWebError } from "../errors.ts";
import { relayStreams, watchedIds } from "../live.ts";
import { csrfField, done, field, formMessage, refused, type FormState } from "../forms.ts";
import { badge, enumName, label, relativeTime } from "../format.ts";
import { html, type Html } from "../html.ts";
import { areaPage } from "../layout.ts";
import { wholeNumber } from "../numbers.ts";
import { htmlResponse } from "../respond.ts";
import { mayActForOthers, mayEnroll } from "../roles.ts";
import { parseCookies, REQUESTS_COOKIE } from "../session.ts";
import type { RouteDeps } from "../routes.ts";
import { listAllCourses } from "./courses.ts";

const FORM = "enroll";
const MAX_REMEMBERED = 20;

function statusOf(enrollment: Enrollment): string {
  return enumName(EnrollmentStatus, enrollment.status, "ENROLLMENT_STATUS_");
}

function rememberedRequests(request: Request): string[] {
  return (parseCookies(request.headers.get("cookie")).get(REQUESTS_COOKIE) ?? "").split(".").filter((id) => /^[0-9a-f-]{36}$/.test(id));
}

function rememberCookie(request: Request, id: string, secure: boolean): string {
  const ids = [id, ...rememberedRequests(request).filter((other) => other !== id)].slice(0, MAX_REMEMBERED);
  return `${REQUESTS_COOKIE}=${ids.join(".")}; Path=/; Max-Age=${30 * 86_400}; HttpOnly; SameSite=Lax${secure ? "; Secure" : ""}`;
}

/** One request: its status badge, the reason or position, and Drop while it holds or awaits a seat. */
export function requestItem(enrollment: Enrollment, csrf: string): Html {
  const status = statusOf(enrollment);
  const tone = status === "ENROLLED" ? "ok" : status === "WAITLISTED" || status === "PENDING" ? "warn" : status === "REJECTED" ? "bad" : "idle";
  const detail =
    status === "WAITLISTED" && enrollment.waitlistPosition !== undefined
      ? `Waitlist position ${enrollment.waitlistPosition}`
      : status === "PENDING" && enrollment.queuePosition !== undefined
        ? `Deciding… ${enrollment.queuePosition} ahead in the queue`
        : enrollment.message || enrollment.reason;
  const mayDrop = status === "ENROLLED" || status === "WAITLISTED";
  return html`<li id="request-${enrollment.requestId}" class="job request" data-request="${enrollment.requestId}" data-status="${status}"${
    status === "PENDING" || status === "WAITLISTED" ? html` data-watch="requests"` : ""
  }>
  <strong>${enrollment.courseCode || enrollment.courseId}</strong>
  <span data-request-status>${badge(label(status), tone)}</span>
  <span data-request-detail>${detail}</span>
  <span class="muted">student ${enrollment.studentId} · asked ${relativeTime(enrollment.createdAt)}</span>
  ${
    mayDrop
      ? html`<form method="post" action="/enrollment/drop" data-enhance data-action="drop" data-confirm="Drop ${enrollment.courseCode}?">
    ${csrfField(csrf)}
    <input type="hidden" name="course_id" value="${enrollment.courseId}">
    <input type="hidden" name="student_id" value="${enrollment.studentId}">
    <button type="submit" class="danger">Drop</button>
  </form>`
      : ""
  }
</li>`;
}

function enrollmentPage(ctx: RouteContext, courses: Course[], requests: Enrollment[], state?: FormState, loadError?: string): Html {
  const forOthers = mayActForOthers(ctx.principal);
  const options = courses.map((c) => ({ value: c.id, label: `${c.code} — ${c.title} (${Math.max(0, (c.capacity ?? 0) - c.seatsTaken)} of ${c.capacity ?? "?"} open)` }));
  return areaPage(ctx, "enrollment", "Enrollment", html`<h1>Enrollment</h1>
<section class="card" aria-labelledby="enroll-title">
  <h2 id="enroll-title">Enroll in a course</h2>
  ${loadError ? html`<p class="error" role="alert">${loadError}</p>` : ""}
  <form method="post" action="/enrollment" data-enhance data-action="enroll" novalidate>
    ${csrfField(ctx.csrf)}
    <input type="hidden" name="idempotency_key" value="${state?.values.idempotency_key ?? randomUUID()}">
    <div class="grid">
      ${field({ form: FORM, name: "course_id", label: "Course", type: "select", required: true, state, options: [{ value: "", label: "Choose a course" }, ...options] })}
      ${
        forOthers
          ? html`${field({ form: FORM, name: "student_id", label: "Student id", required: true, state })}
      ${field({ form: FORM, name: "priority", label: "Priority (0–100)", type: "number", value: "0", state, attrs: html`min="0" max="100" step="1"` })}`
          : ""
      }
    </div>
    ${formMessage(state)}
    <button type="submit">Enroll</button>
  </form>
</section>
<section class="card" aria-labelledby="requests-title">
  <h2 id="requests-title">Your requests</h2>
  <p class="muted" aria-live="polite" data-live-status></p>
  <ul id="request-list" class="plain" aria-live="polite">${requests.map((r) => requestItem(r, ctx.csrf))}</ul>
  <p class="muted" data-empty${requests.length ? html` hidden` : ""}>No requests from this browser yet.</p>
</section>`);
}

/** The enrollment area's routes. */
export function enrollmentRoutes(deps: RouteDeps): Route[] {
  const client = deps.backends.enrollment;
  const forbidden = () => new Response("Enrollment is for students and registrars.", { status: 403 });

  async function rerender(ctx: RouteContext, state?: FormState): Promise<Html> {
    const requests = (
      await Promise.all(
        rememberedRequests(ctx.request).map((requestId) =>
          unary(client.getRequest.bind(client), { lookup: { $case: "requestId", value: requestId } }, { token: ctx.token })
            .then((r) => r.enrollment)
            // Another user's request (a shared browser) or one since removed: not this user's to see.
            .catch(() => undefined),
        ),
      )
    ).filter((r): r is Enrollment => r !== undefined && (mayActForOthers(ctx.principal) || r.studentId === ctx.principal.subject));
    try {
      return enrollmentPage(ctx, await listAllCourses(deps, ctx.token), requests, state);
    } catch (error) {
      return enrollmentPage(ctx, [], requests, state, toWebError(error).message);
    }
  }

  return [
    {
      method: "GET",
      path: "/enrollment",
      async handler(ctx) {
        if (!mayEnroll(ctx.principal)) return forbidden();
        return htmlResponse(await rerender(ctx));
      },
    },
    {
      method: "POST",
      path: "/enrollment",
      async handler(ctx) {
        if (!mayEnroll(ctx.principal)) return forbidden();
        const value = (name: string) => String(ctx.form?.get(name) ?? "").trim();
        const forOthers = mayActForOthers(ctx.principal);
        const priority = forOthers ? wholeNumber(value("priority")) : 0;
        if (priority === "invalid") {
          return refused(ctx, fieldError("priority", "must be a whole number"), (state) => rerender(ctx, state));
        }
        try {
          const response = await unary(
            client.enroll.bind(client),
            {
              idempotencyKey: value("idempotency_key") || randomUUID(),
              studentId: forOthers ? value("student_id") : ctx.principal.subject,
              courseId: value("course_id"),
              priority: priority ?? 0,
              // Answer at once; the decision arrives on the page through WatchRequest.
              wait: false,
            },
            { token: ctx.token },
          );
          const enrollment: Enrollment = { ...response };
          const cookie = rememberCookie(ctx.request, response.requestId, deps.cookieSecure);
          const result = done(ctx, "/enrollment", { id: response.requestId, html: requestItem(enrollment, ctx.csrf).value });
          result.headers.append("set-cookie", cookie);
          return result;
        } catch (error) {
          return refused(ctx, toWebError(error, { course_id: "course_id", STUDENT_MISMATCH: "student_id", COURSE_NOT_FOUND: "course_id", ALREADY_ENROLLED: "course_id", ALREADY_WAITLISTED: "course_id", ALREADY_PENDING: "course_id" }), (state) =>
            rerender(ctx, state),
          );
        }
      },
    },
    {
      method: "POST",
      path: "/enrollment/drop",
      async handler(ctx) {
        if (!mayEnroll(ctx.principal)) return forbidden();
        const courseId = String(ctx.form?.get("course_id") ?? "");
        const studentId = mayActForOthers(ctx.principal) ? String(ctx.form?.get("student_id") ?? "") : ctx.principal.subject;
        try {
          const dropped = await unary(client.drop.bind(client), { studentId, courseId, idempotencyKey: randomUUID() }, { token: ctx.token });
          const { enrollment } = await unary(client.getRequest.bind(client), { lookup: { $case: "requestId", value: dropped.requestId } }, { token: ctx.token });
          return done(ctx, "/enrollment", { id: dropped.requestId, html: enrollment ? requestItem(enrollment, ctx.csrf).value : undefined });
        } catch (error) {
          return refused(ctx, toWebError(error), (state) => rerender(ctx, state));
        }
      },
    },
    {
      method: "GET",
      path: "/live/requests",
      handler(ctx) {
        return deps.live.open(ctx.principal.subject, (sink) => {
          const calls: grpc.ClientReadableStream<WatchRequestResponse>[] = watchedIds(ctx.url).map((requestId) => client.watchRequest({ requestId }, bearer(ctx.token)));
          // WatchRequest ends once its request is decided for good; when all have, the browser stops listening.
          return relayStreams(
            sink,
            calls,
            ({ enrollment }) => {
              if (enrollment) sink.send("request", { id: enrollment.requestId, status: statusOf(enrollment), html: requestItem(enrollment, ctx.csrf).value });
            },
            { endIsFinal: true },
          );
        });
      },
    },
  ];
}
