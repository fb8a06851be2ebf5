/**
 * Courses (registrars; operators may look): create a course, change its capacity, and watch seats
 * taken, waitlist and pending requests change live.
 */
import { unary } from "@coursemesh/shared/grpc/client.ts";
import type { Course } from "@coursemesh/proto/coursemesh/allocator/v1/allocator.ts";
import type { Route, RouteContext } from "../app.ts";
import { fieldError, toWebError } from "../errors.ts";
import { csrfField, done, field, formMessage, refused, type FormState } from "../forms.ts";
import { html, type Html } from "../html.ts";
import { areaPage } from "../layout.ts";
import { wholeNumber } from "../numbers.ts";
import { pollStream } from "../live.ts";
import { allPages } from "../paging.ts";
import { htmlResponse } from "../respond.ts";
import { mayManageCourses, mayViewCourses } from "../roles.ts";
import type { RouteDeps } from "../routes.ts";

const FORM = "course";
const FIELD_MAP = { COURSE_CODE_TAKEN: "code", CAPACITY_BELOW_SEATS_TAKEN: "capacity" };
/**
 * How often an open courses page asks the allocator for fresh counts. The allocator has no watch
 * RPC for courses, so the dashboard polls; each open page polls with its own user's token (the
 * allocator decides what that user may read, so one user's answer is never shown to another), and
 * sends the browser only the rows that changed. Two seconds keeps the page live at one cheap,
 * indexed list query per open page.
 */
export const COURSE_POLL_MS = 2000;

/** One course row; the live stream sends the same markup when its counts change. */
export function courseRow(course: Course, ctx: Pick<RouteContext, "csrf" | "principal">): Html {
  return html`<tr id="course-${course.id}" data-course="${course.id}">
  <td data-label="Code"><a href="/courses/${course.id}" data-course-link><strong>${course.code}</strong></a></td>
  <td data-label="Title">${course.title}</td>
  <td data-label="Seats taken" class="num" data-seats-taken>${course.seatsTaken} / ${course.capacity ?? "?"}</td>
  <td data-label="Waitlist" class="num" data-waitlist>${course.waitlistLength}</td>
  <td data-label="Pending" class="num" data-pending>${course.pending}</td>
  ${
    mayManageCourses(ctx.principal)
      ? html`<td data-label="Capacity"><form method="post" action="/courses/${course.id}/capacity" data-enhance data-action="capacity" class="actions" novalidate>
    ${csrfField(ctx.csrf)}
    <label class="visually-hidden" for="capacity-${course.id}">New capacity of ${course.code}</label>
    <input id="capacity-${course.id}" name="capacity" type="number" min="0" step="1" value="${course.capacity ?? ""}" aria-describedby="capacity-${course.id}-error" class="short">
    <button type="submit" class="secondary">Set</button>
    <p id="capacity-${course.id}-error" class="error" data-error-for="capacity"></p>
  </form></td>`
      : ""
  }
</tr>`;
}

function coursesPage(ctx: RouteContext, courses: Course[], state?: FormState, loadError?: string): Html {
  const manage = mayManageCourses(ctx.principal);
  return areaPage(ctx, "courses", "Courses", html`<h1>Courses</h1>
${
  manage
    ? html`<section class="card" aria-labelledby="create-course">
  <h2 id="create-course">Create a course</h2>
  <form method="post" action="/courses" data-enhance data-action="create" novalidate>
    ${csrfField(ctx.csrf)}
    <div class="grid">
      ${field({ form: FORM, name: "code", label: "Code", required: true, state, help: "e.g. CMPUT 201" })}
      ${field({ form: FORM, name: "title", label: "Title", required: true, state })}
      ${field({ form: FORM, name: "capacity", label: "Capacity", type: "number", required: true, state, attrs: html`min="0" step="1"` })}
    </div>
    ${formMessage(state)}
    <button type="submit">Create course</button>
  </form>
</section>`
    : ""
}
<section class="card" aria-labelledby="course-list">
  <h2 id="course-list">All courses</h2>
  ${!manage ? html`<p class="help">Courses are the registrar's to create and change; you can follow them here.</p>` : ""}
  <p class="muted" aria-live="polite" data-live-status>${loadError ?? ""}</p>
  <table class="responsive" data-live="/live/courses">
    <thead><tr><th scope="col">Code</th><th scope="col">Title</th><th scope="col">Seats taken</th><th scope="col">Waitlist</th><th scope="col">Pending</th>${manage ? html`<th scope="col">Capacity</th>` : ""}</tr></thead>
    <tbody id="course-rows">${courses.map((c) => courseRow(c, ctx))}</tbody>
  </table>
  <p class="muted" data-empty${courses.length ? html` hidden` : ""}>No courses yet.</p>
</section>`);
}

/** Every course the user may see (the allocator pages them; the dashboard shows the first 500). */
export function listAllCourses(deps: RouteDeps, token: string): Promise<Course[]> {
  const client = deps.backends.enrollment;
  return allPages(async (pageToken) => {
    const response = await unary(client.listCourses.bind(client), { pageSize: 100, pageToken }, { token });
    return { items: response.courses, next: response.nextPageToken };
  });
}

/** The courses area's routes. */
export function courseRoutes(deps: RouteDeps): Route[] {
  const client = deps.backends.enrollment;
  const forbidden = () => new Response("Courses are for registrars and operators.", { status: 403 });

  async function rerender(ctx: RouteContext, state?: FormState): Promise<Html> {
    try {
      return coursesPage(ctx, await listAllCourses(deps, ctx.token), state);
    } catch (error) {
      return coursesPage(ctx, [], state, toWebError(error).message);
    }
  }

  return [
    {
      method: "GET",
      path: "/courses",
      async handler(ctx) {
        if (!mayViewCourses(ctx.principal)) return forbidden();
        return htmlResponse(await rerender(ctx));
      },
    },
    {
      method: "POST",
      path: "/courses",
      async handler(ctx) {
        if (!mayManageCourses(ctx.principal)) return forbidden();
        const capacity = wholeNumber(String(ctx.form?.get("capacity") ?? ""));
        if (capacity === "invalid") return refused(ctx, fieldError("capacity", "must be a whole number"), (state) => rerender(ctx, state));
        try {
          const response = await unary(
            client.createCourse.bind(client),
            { code: String(ctx.form?.get("code") ?? ""), title: String(ctx.form?.get("title") ?? ""), capacity },
            { token: ctx.token },
          );
          return done(ctx, "/courses", { id: response.course!.id, html: courseRow(response.course!, ctx).value });
        } catch (error) {
          return refused(ctx, toWebError(error, FIELD_MAP), (state) => rerender(ctx, state));
        }
      },
    },
    {
      method: "POST",
      path: "/courses/:id/capacity",
      async handler(ctx) {
        if (!mayManageCourses(ctx.principal)) return forbidden();
        const capacity = wholeNumber(String(ctx.form?.get("capacity") ?? ""));
        if (capacity === "invalid" || capacity === undefined) return refused(ctx, fieldError("capacity", "must be a whole number"), (state) => rerender(ctx, state));
        try {
          const response = await unary(client.updateCourse.bind(client), { id: ctx.params.id!, capacity, title: undefined }, { token: ctx.token });
          return done(ctx, "/courses", { id: response.course!.id, html: courseRow(response.course!, ctx).value, promoted: response.promotedStudentIds });
        } catch (error) {
          return refused(ctx, toWebError(error, FIELD_MAP), (state) => rerender(ctx, state));
        }
      },
    },
    {
      method: "GET",
      path: "/live/courses",
      handler(ctx) {
        if (!mayViewCourses(ctx.principal)) return forbidden();
        return deps.live.open(ctx.principal.subject, (sink) =>
          pollStream(
            sink,
            "course",
            async () =>
              (await listAllCourses(deps, ctx.token)).map((course) => ({
                id: course.id,
                key: `${course.seatsTaken}/${course.capacity}/${course.waitlistLength}/${course.pending}/${course.title}`,
                html: courseRow(course, ctx).value,
              })),
            COURSE_POLL_MS,
          ),
        );
      },
    },
  ];
}
