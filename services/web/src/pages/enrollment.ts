/**
 * Enrollment (students, and registrars acting for them): enroll in a course, see one's requests
 * (ListRequests: a student their own, a registrar the student they look up), the decision and the
 * waitlist position arriving live (WatchRequest), drop.
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
import type { RouteDeps } from "../routes.ts";
import { listAllCourses } from "./courses.ts";

const FORM = "enroll";
/** Requests a page shows; older ones are a link away. */
const PAGE_SIZE = 20;

function statusOf(enrollment: Enrollment): string {
  return enumName(EnrollmentStatus, enrollment.status, "ENROLLMENT_STATUS_");
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

/** Whose requests a page lists, and which page of them. */
interface RequestList {
  /** The student looked up (registrars); empty for a student's own list. */
  studentId: string;
  requests: Enrollment[];
  /** Token of the older requests; empty on the last page. */
  olderToken: string;
  error?: string;
}

function requestListSection(ctx: RouteContext, list: RequestList): Html {
  const forOthers = mayActForOthers(ctx.principal);
  const older = new URLSearchParams({ ...(list.studentId ? { student_id: list.studentId } : {}), page_token: list.olderToken });
  return html`<section class="card" aria-labelledby="requests-title">
  <h2 id="requests-title">${forOthers ? (list.studentId ? `Requests of ${list.studentId}` : "A student's requests") : "Your requests"}</h2>
  ${
    forOthers
      ? html`<form method="get" action="/enrollment">
    ${field({ form: "lookup", name: "student_id", label: "Student id", value: list.studentId })}
    <button type="submit">Show requests</button>
  </form>`
      : ""
  }
  ${list.error ? html`<p class="error" role="alert">${list.error}</p>` : ""}
  <p class="muted" aria-live="polite" data-live-status></p>
  <ul id="request-list" class="plain" aria-live="polite"${forOthers ? html` data-student="${list.studentId}"` : ""}>${list.requests.map((r) => requestItem(r, ctx.csrf))}</ul>
  <p class="muted" data-empty${list.requests.length ? html` hidden` : ""}>${forOthers && !list.studentId ? "Enter a student id to see their requests." : "No requests yet."}</p>
  ${list.olderToken ? html`<p><a href="/enrollment?${older.toString()}" data-older>Older requests</a></p>` : ""}
</section>`;
}

function enrollmentPage(ctx: RouteContext, courses: Course[], list: RequestList, state?: FormState, loadError?: string): Html {
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
          ? html`${field({ form: FORM, name: "student_id", label: "Student id", required: true, state, value: list.studentId })}
      ${field({ form: FORM, name: "priority", label: "Priority (0–100)", type: "number", value: "0", state, attrs: html`min="0" max="100" step="1"` })}`
          : ""
      }
    </div>
    ${formMessage(state)}
    <button type="submit">Enroll</button>
  </form>
</section>
${requestListSection(ctx, list)}`);
}

/** Where a form without the script goes back to: the list the request is in (a registrar's: that student's). */
function listLocation(ctx: RouteContext, studentId: string): string {
  return mayActForOthers(ctx.principal) ? `/enrollment?${new URLSearchParams({ student_id: studentId })}` : "/enrollment";
}

/** The enrollment area's routes. */
export function enrollmentRoutes(deps: RouteDeps): Route[] {
  const client = deps.backends.enrollment;
  const forbidden = () => new Response("Enrollment is for students and registrars.", { status: 403 });

  /** One page of the requests the page lists: a student's own, or the looked-up student's for a registrar. */
  async function requestList(ctx: RouteContext, studentId: string, pageToken: string): Promise<RequestList> {
    const list: RequestList = { studentId: mayActForOthers(ctx.principal) ? studentId : "", requests: [], olderToken: "" };
    if (mayActForOthers(ctx.principal) && !studentId) return list;
    try {
      const page = await unary(client.listRequests.bind(client), { studentId: list.studentId, pageSize: PAGE_SIZE, pageToken }, { token: ctx.token });
      return { ...list, requests: page.requests, olderToken: page.nextPageToken };
    } catch (error) {
      return { ...list, error: toWebError(error).message };
    }
  }

  async function rerender(ctx: RouteContext, state?: FormState, studentId = state?.values.student_id ?? ""): Promise<Html> {
    const [list, courses] = await Promise.all([
      requestList(ctx, studentId.trim(), ctx.url.searchParams.get("page_token") ?? ""),
      listAllCourses(deps, ctx.token).then(
        (courses) => ({ courses, error: undefined }),
        (error: unknown) => ({ courses: [] as Course[], error: toWebError(error).message }),
      ),
    ]);
    return enrollmentPage(ctx, courses.courses, list, state, courses.error);
  }

  return [
    {
      method: "GET",
      path: "/enrollment",
      async handler(ctx) {
        if (!mayEnroll(ctx.principal)) return forbidden();
        return htmlResponse(await rerender(ctx, undefined, ctx.url.searchParams.get("student_id") ?? ""));
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
          return done(ctx, listLocation(ctx, response.studentId), { id: response.requestId, studentId: response.studentId, html: requestItem(enrollment, ctx.csrf).value });
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
          return done(ctx, listLocation(ctx, dropped.studentId), { id: dropped.requestId, html: enrollment ? requestItem(enrollment, ctx.csrf).value : undefined });
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
