/**
 * A course's roster (registrars; operators may look): its counts, the students holding a seat and
 * its waitlist in order, each with Drop for registrars, followed live by the courses poll.
 */
import { randomUUID } from "node:crypto";
import { unary } from "@coursemesh/shared/grpc/client.ts";
import type { Course, Enrollment } from "@coursemesh/proto/coursemesh/allocator/v1/allocator.ts";
import type { Route, RouteContext } from "../app.ts";
import { toWebError } from "../errors.ts";
import { csrfField, done, refused, type FormState } from "../forms.ts";
import { relativeTime } from "../format.ts";
import { html, type Html } from "../html.ts";
import { areaPage } from "../layout.ts";
import { pollStream } from "../live.ts";
import { allPages } from "../paging.ts";
import { htmlResponse } from "../respond.ts";
import { mayActForOthers, mayViewCourses } from "../roles.ts";
import type { RouteDeps } from "../routes.ts";
import { COURSE_POLL_MS } from "./courses.ts";

export interface Roster {
  course: Course;
  enrolled: Enrollment[];
  waitlist: Enrollment[];
}

/** The course and every page of its enrollments and waitlist (up to 500 each). */
export async function loadRoster(deps: RouteDeps, token: string, courseId: string): Promise<Roster> {
  const client = deps.backends.enrollment;
  const [course, enrolled, waitlist] = await Promise.all([
    unary(client.getCourse.bind(client), { id: courseId }, { token }),
    allPages(async (pageToken) => {
      const page = await unary(client.listEnrollments.bind(client), { courseId, pageSize: 100, pageToken }, { token });
      return { items: page.enrollments, next: page.nextPageToken };
    }),
    allPages(async (pageToken) => {
      const page = await unary(client.listWaitlist.bind(client), { courseId, pageSize: 100, pageToken }, { token });
      return { items: page.entries, next: page.nextPageToken };
    }),
  ]);
  return { course: course.course!, enrolled, waitlist };
}

function dropButton(course: Course, enrollment: Enrollment, ctx: Pick<RouteContext, "csrf" | "principal">): Html {
  if (!mayActForOthers(ctx.principal)) return html``;
  return html`<form method="post" action="/courses/${course.id}/drop" data-enhance data-action="drop" data-confirm="Drop ${enrollment.studentId} from ${course.code}?">
    ${csrfField(ctx.csrf)}
    <input type="hidden" name="student_id" value="${enrollment.studentId}">
    <button type="submit" class="danger" aria-label="Drop ${enrollment.studentId}">Drop</button>
  </form>`;
}

/** The roster's facts and lists as one element; the live stream sends the same markup when anything in it changes. */
export function rosterView(roster: Roster, ctx: Pick<RouteContext, "csrf" | "principal">): Html {
  const { course, enrolled, waitlist } = roster;
  const drops = mayActForOthers(ctx.principal);
  return html`<div id="roster-${course.id}" data-roster="${course.id}">
<section class="card" aria-labelledby="course-facts">
  <h2 id="course-facts">${course.code}</h2>
  <p>${course.title}</p>
  <dl class="facts">
    <dt>Capacity</dt><dd data-capacity>${course.capacity ?? "?"}</dd>
    <dt>Seats taken</dt><dd data-seats-taken>${course.seatsTaken}</dd>
    <dt>Waitlist</dt><dd data-waitlist>${course.waitlistLength}</dd>
    <dt>Pending</dt><dd data-pending>${course.pending}</dd>
  </dl>
</section>
<section class="card" aria-labelledby="enrolled-title">
  <h2 id="enrolled-title">Enrolled (${enrolled.length})</h2>
  <table class="responsive">
    <thead><tr><th scope="col">Student</th><th scope="col">Seat since</th>${drops ? html`<th scope="col">Actions</th>` : ""}</tr></thead>
    <tbody id="enrolled-rows">${enrolled.map(
      (e) => html`<tr data-enrolled="${e.studentId}"><td data-label="Student">${e.studentId}</td><td data-label="Seat since">${relativeTime(e.enrolledAt)}</td>${
        drops ? html`<td data-label="Actions">${dropButton(course, e, ctx)}</td>` : ""
      }</tr>`,
    )}</tbody>
  </table>
  ${enrolled.length ? "" : html`<p class="muted">Nobody holds a seat.</p>`}
</section>
<section class="card" aria-labelledby="waitlist-title">
  <h2 id="waitlist-title">Waitlist (${waitlist.length})</h2>
  <table class="responsive">
    <thead><tr><th scope="col">Position</th><th scope="col">Student</th><th scope="col">Asked</th>${drops ? html`<th scope="col">Actions</th>` : ""}</tr></thead>
    <tbody id="waitlist-rows">${waitlist.map(
      (e) => html`<tr data-waitlisted="${e.studentId}"><td data-label="Position" class="num" data-position>${e.waitlistPosition ?? "?"}</td><td data-label="Student">${e.studentId}</td><td data-label="Asked">${relativeTime(e.createdAt)}</td>${
        drops ? html`<td data-label="Actions">${dropButton(course, e, ctx)}</td>` : ""
      }</tr>`,
    )}</tbody>
  </table>
  ${waitlist.length ? "" : html`<p class="muted">Nobody is waiting.</p>`}
</section>
</div>`;
}

/** What the roster shows, without the "12 s ago" texts that change by themselves: the poll sends it again when this changes. */
export function rosterKey({ course, enrolled, waitlist }: Roster): string {
  const people = (list: Enrollment[]) => list.map((e) => `${e.studentId}@${e.waitlistPosition ?? ""}`).join(",");
  return `${course.code}/${course.title}/${course.capacity}/${course.seatsTaken}/${course.waitlistLength}/${course.pending}|${people(enrolled)}|${people(waitlist)}`;
}

function rosterPage(ctx: RouteContext, roster: Roster, state?: FormState): Html {
  return areaPage(ctx, "courses", `${roster.course.code} roster`, html`<p><a href="/courses">All courses</a></p>
<h1>${roster.course.code} · ${roster.course.title}</h1>
<p class="muted" aria-live="polite" data-live-status></p>
${state?.error ? html`<p class="error" role="alert">${state.error.message}</p>` : ""}
<div data-live="/live/courses/${roster.course.id}">${rosterView(roster, ctx)}</div>`);
}

function failurePage(ctx: RouteContext, message: string): Html {
  return areaPage(ctx, "courses", "Course", html`<p><a href="/courses">All courses</a></p><h1>Course</h1><p class="error" role="alert">${message}</p>`);
}

/** The course page's routes. */
export function rosterRoutes(deps: RouteDeps): Route[] {
  const client = deps.backends.enrollment;
  const forbidden = () => new Response("Course rosters are for registrars and operators.", { status: 403 });

  async function render(ctx: RouteContext, state?: FormState): Promise<Html> {
    try {
      return rosterPage(ctx, await loadRoster(deps, ctx.token, ctx.params.id!), state);
    } catch (error) {
      return failurePage(ctx, toWebError(error).message);
    }
  }

  return [
    {
      method: "GET",
      path: "/courses/:id",
      async handler(ctx) {
        if (!mayViewCourses(ctx.principal)) return forbidden();
        try {
          return htmlResponse(rosterPage(ctx, await loadRoster(deps, ctx.token, ctx.params.id!)));
        } catch (error) {
          const failure = toWebError(error);
          return htmlResponse(failurePage(ctx, failure.message), { status: failure.status });
        }
      },
    },
    {
      method: "POST",
      path: "/courses/:id/drop",
      async handler(ctx) {
        if (!mayActForOthers(ctx.principal)) return forbidden();
        const courseId = ctx.params.id!;
        try {
          const studentId = String(ctx.form?.get("student_id") ?? "");
          const dropped = await unary(client.drop.bind(client), { studentId, courseId, idempotencyKey: randomUUID() }, { token: ctx.token });
          const roster = await loadRoster(deps, ctx.token, courseId);
          const message = dropped.promotedStudentId ? `Dropped ${studentId}; ${dropped.promotedStudentId} got the seat.` : `Dropped ${studentId}.`;
          return done(ctx, `/courses/${courseId}`, { id: courseId, html: rosterView(roster, ctx).value, promoted: dropped.promotedStudentId, message });
        } catch (error) {
          return refused(ctx, toWebError(error), (state) => render(ctx, state));
        }
      },
    },
    {
      method: "GET",
      path: "/live/courses/:id",
      handler(ctx) {
        if (!mayViewCourses(ctx.principal)) return forbidden();
        const courseId = ctx.params.id!;
        return deps.live.open(ctx.principal.subject, (sink) =>
          pollStream(
            sink,
            "course",
            async () => {
              const roster = await loadRoster(deps, ctx.token, courseId);
              return [{ id: courseId, key: rosterKey(roster), html: rosterView(roster, ctx).value }];
            },
            COURSE_POLL_MS,
          ),
        );
      },
    },
  ];
}
