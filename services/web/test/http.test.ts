/**
 * The dashboard over plain HTTP, against a real allocator and ingest: no page or stream without a valid
 * session cookie, no change without the CSRF token from the dashboard's own origin, the service's
 * own messages next to the fields, role-aware pages, security headers, and a clean SIGTERM.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { parseHTML } from "linkedom";
import { mintToken } from "@coursemesh/shared/auth.ts";
import { createClient, unary } from "@coursemesh/shared/grpc/client.ts";
import { TEST_JWT_SECRET, testToken } from "@coursemesh/shared/testing/harness.ts";
import { EnrollmentServiceClient } from "@coursemesh/proto/coursemesh/allocator/v1/allocator.ts";
import { coursePdf } from "../../ingest/test/pdfs.ts";
import { csrfToken } from "../src/session.ts";
import { startStack, WEB_SESSION_SECRET, type Stack } from "./stack.ts";

let stack: Stack;
let base: string;
let registrar: string;
let student: string;

beforeAll(async () => {
  stack = await startStack({ backends: ["allocator", "ingest"] });
  base = stack.web.httpUrl;
  registrar = await testToken("rita", ["registrar"]);
  student = await testToken("sam", ["student"]);
}, 90_000);

afterAll(async () => {
  await stack?.stop();
}, 60_000);

const cookie = (token: string) => `cm_session=${token}`;
const origin = () => ({ origin: base });

function post(path: string, token: string | undefined, fields: Record<string, string>, headers: Record<string, string> = {}) {
  return fetch(`${base}${path}`, {
    method: "POST",
    redirect: "manual",
    headers: { "content-type": "application/x-www-form-urlencoded", ...origin(), ...(token ? { cookie: cookie(token) } : {}), ...headers },
    body: new URLSearchParams(fields),
  });
}

async function courseCodes(): Promise<string[]> {
  const client = createClient(EnrollmentServiceClient, stack.services.allocator!.grpcAddress, { caller: "test" });
  try {
    const response = await unary(client.listCourses.bind(client), { pageSize: 100, pageToken: "" }, { token: registrar });
    return response.courses.map((c) => c.code);
  } finally {
    client.close();
  }
}

describe("without a valid session there is only the sign-in page, never data", () => {
  test("no cookie: pages redirect to sign-in, streams and changes get 401", async () => {
    for (const path of ["/", "/monitors", "/courses", "/enrollment", "/uploads", "/monitors/0190aaaa-0000-7000-8000-000000000000/history"]) {
      const response = await fetch(`${base}${path}`, { redirect: "manual" });
      expect({ path, status: response.status, location: response.headers.get("location") }).toEqual({ path, status: 302, location: "/signin" });
    }
    const stream = await fetch(`${base}/live/courses`, { headers: { accept: "text/event-stream" } });
    expect(stream.status).toBe(401);
    const change = await post("/courses", undefined, { code: "NOPE 100", title: "No", capacity: "5" });
    expect([change.status, change.headers.get("location")]).toEqual([303, "/signin"]);
    const scripted = await post("/courses", undefined, { code: "NOPE 100", title: "No", capacity: "5" }, { accept: "application/json" });
    expect(scripted.status).toBe(401);
    expect(await courseCodes()).not.toContain("NOPE 100");
  });

  test("a forged, expired or garbage cookie is cleared and gets the sign-in page", async () => {
    const forged = await mintToken({ subject: "rita", roles: ["registrar", "operator"], secret: "not-the-deployment-secret-0123456789abc" });
    const expired = await mintToken({ subject: "rita", roles: ["registrar"], secret: TEST_JWT_SECRET, expiresIn: "-5m" });
    for (const token of [forged, expired, "garbage", `${registrar}tampered`]) {
      const response = await fetch(`${base}/courses`, { redirect: "manual", headers: { cookie: cookie(token) } });
      expect(response.status).toBe(302);
      expect(response.headers.get("location")).toBe("/signin");
      expect(response.headers.get("set-cookie")).toContain("cm_session=;");
      expect(response.headers.get("set-cookie")).toContain("Max-Age=0");
      expect(await response.text()).toBe("");
    }
  });

  test("signing in with a trusted token sets an HttpOnly SameSite cookie; an untrusted one is refused with a reason", async () => {
    const good = await post("/signin", undefined, { token: registrar });
    expect(good.status).toBe(303);
    const setCookie = good.headers.get("set-cookie")!;
    expect(setCookie).toStartWith(`cm_session=${registrar};`);
    expect(setCookie).toMatch(/HttpOnly/);
    expect(setCookie).toMatch(/SameSite=(Lax|Strict)/);
    expect(setCookie).not.toMatch(/Secure/);

    const forged = await mintToken({ subject: "rita", roles: ["operator"], secret: "not-the-deployment-secret-0123456789abc" });
    const bad = await post("/signin", undefined, { token: forged });
    expect(bad.status).toBe(401);
    expect(bad.headers.get("set-cookie")).toBeNull();
    const { document } = parseHTML(await bad.text());
    expect(document.querySelector("#token-error")?.textContent).toContain("not valid here");

    const crossSite = await post("/signin", undefined, { token: registrar }, { origin: "https://evil.example" });
    expect(crossSite.status).toBe(403);
    expect(crossSite.headers.get("set-cookie")).toBeNull();
  });
});

describe("changes need the session's CSRF token, from the dashboard's own origin", () => {
  test("no token, another session's token or another origin: 403 and nothing changes", async () => {
    const attempts = [
      await post("/courses", registrar, { code: "CSRF 101", title: "Forged", capacity: "5" }),
      await post("/courses", registrar, { code: "CSRF 101", title: "Forged", capacity: "5", csrf: csrfToken(WEB_SESSION_SECRET, student) }),
      await post("/courses", registrar, { code: "CSRF 101", title: "Forged", capacity: "5", csrf: csrfToken(WEB_SESSION_SECRET, registrar) }, { origin: "https://evil.example" }),
    ];
    expect(attempts.map((r) => r.status)).toEqual([403, 403, 403]);
    expect(await courseCodes()).not.toContain("CSRF 101");

    const real = await post("/courses", registrar, { code: "CSRF 101", title: "Real", capacity: "5", csrf: csrfToken(WEB_SESSION_SECRET, registrar) });
    expect(real.status).toBe(303);
    expect(await courseCodes()).toContain("CSRF 101");
  });
});

describe("uploads work without the page's script, and need the CSRF field", () => {
  const upload = (headers: Record<string, string>, fields: [string, string | Blob, string?][]) => {
    const form = new FormData();
    for (const [name, value, filename] of fields) if (typeof value === "string") form.append(name, value);
    else form.append(name, value, filename);
    return fetch(`${base}/uploads`, { method: "POST", headers: { cookie: cookie(student), ...origin(), accept: "application/json", ...headers }, body: form });
  };
  const pdf = new Blob(["%PDF-1.4 not much of a PDF"], { type: "application/pdf" });

  test("a plain multipart form post with the CSRF field first starts a job and returns to the uploads page", async () => {
    const { bytes } = await coursePdf();
    const form = new FormData();
    form.append("csrf", csrfToken(WEB_SESSION_SECRET, student));
    form.append("course_title", "Plain form notes");
    form.append("files", new Blob([bytes], { type: "application/pdf" }), "plain.pdf");
    const response = await fetch(`${base}/uploads`, { method: "POST", redirect: "manual", headers: { cookie: cookie(student), ...origin() }, body: form });
    expect([response.status, response.headers.get("location")]).toEqual([303, "/uploads"]);
    const { document } = parseHTML(await (await fetch(`${base}/uploads`, { headers: { cookie: cookie(student) } })).text());
    expect([...document.querySelectorAll("[data-job] h3")].map((h) => h.textContent)).toEqual([expect.stringContaining("Plain form notes")]);
  });

  test("without the CSRF field before the files: 403, and nothing is sent on", async () => {
    const response = await upload({}, [["course_title", "Forged notes"], ["files", pdf, "notes.pdf"]]);
    expect(response.status).toBe(403);
    const page = await (await fetch(`${base}/uploads`, { headers: { cookie: cookie(student) } })).text();
    expect(page).not.toContain("Forged notes");
  });
});

describe("bad input shows the service's own message next to the field", () => {
  const csrf = () => csrfToken(WEB_SESSION_SECRET, registrar);

  test("a plain form post gets the page again, the message under the field and the values kept", async () => {
    const response = await post("/courses", registrar, { code: "", title: "Linear Algebra", capacity: "30", csrf: csrf() });
    expect(response.status).toBe(400);
    const { document } = parseHTML(await response.text());
    const error = document.querySelector("#course-code-error")?.textContent ?? "";
    expect(error.length).toBeGreaterThan(0);
    expect(document.querySelector("#course-code")?.getAttribute("aria-invalid")).toBe("true");
    expect(document.querySelector("#course-code")?.getAttribute("aria-describedby")).toContain("course-code-error");
    expect(document.querySelector("#course-title")?.getAttribute("value")).toBe("Linear Algebra");
    // The words are the allocator's, not the dashboard's.
    const client = createClient(EnrollmentServiceClient, stack.services.allocator!.grpcAddress, { caller: "test" });
    const direct = await unary(client.createCourse.bind(client), { code: "", title: "Linear Algebra", capacity: 30 }, { token: registrar }).catch((e) => e);
    client.close();
    expect(document.querySelector("[data-form-error]")?.textContent).toBe(direct.details);
  });

  test("the page's script gets JSON with the field messages; a taken code is 409 on the code field", async () => {
    await post("/courses", registrar, { code: "MATH 125", title: "Linear Algebra I", capacity: "30", csrf: csrf() });
    const taken = await post("/courses", registrar, { code: "MATH 125", title: "Again", capacity: "30", csrf: csrf() }, { accept: "application/json" });
    expect(taken.status).toBe(409);
    const body = (await taken.json()) as { error: string; fields: Record<string, string> };
    expect(body.fields.code).toContain("MATH 125");
    expect(body.error).toContain("already exists");

    const negative = await post("/courses", registrar, { code: "MATH 200", title: "X", capacity: "-3", csrf: csrf() }, { accept: "application/json" });
    expect(negative.status).toBe(400);
    expect(Object.keys(((await negative.json()) as { fields: object }).fields)).toContain("capacity");
  });
});

describe("enrollment lists the user's requests from the allocator, not from this browser", () => {
  test("a student sees requests made anywhere, newest first, without any cookie but the session; a registrar looks a student up", async () => {
    const client = createClient(EnrollmentServiceClient, stack.services.allocator!.grpcAddress, { caller: "test" });
    const made: string[] = [];
    try {
      for (const code of ["LIST 101", "LIST 102"]) {
        const { course } = await unary(client.createCourse.bind(client), { code, title: "Listed", capacity: 5 }, { token: registrar });
        // Made elsewhere (another browser, grpcurl): the dashboard has never seen these ids.
        const answer = await unary(client.enroll.bind(client), { idempotencyKey: `list-${code}`, studentId: "sam", courseId: course!.id, priority: 0, wait: true }, { token: student });
        made.unshift(answer.requestId);
      }
    } finally {
      client.close();
    }
    const listed = async (token: string, query = "") => {
      const response = await fetch(`${base}/enrollment${query}`, { headers: { cookie: cookie(token) } });
      expect(response.status).toBe(200);
      expect(response.headers.get("set-cookie")).toBeNull();
      const { document } = parseHTML(await response.text());
      return {
        ids: [...document.querySelectorAll("#request-list [data-request]")].map((li) => li.getAttribute("data-request")),
        heading: document.querySelector("#requests-title")?.textContent,
      };
    };
    expect(await listed(student)).toEqual({ ids: made, heading: "Your requests" });
    // A registrar sees nobody's until they name the student, then that student's.
    expect((await listed(registrar)).ids).toEqual([]);
    expect(await listed(registrar, "?student_id=sam")).toEqual({ ids: made, heading: "Requests of sam" });
    // A student cannot look at another student's list by naming them: the page still shows their own.
    expect((await listed(await testToken("tess", ["student"]), "?student_id=sam")).ids).toEqual([]);
  });
});

describe("what a role sees", () => {
  test("a student's navigation has no Courses, and the courses page and its changes are refused", async () => {
    const page = await fetch(`${base}/enrollment`, { headers: { cookie: cookie(student) } });
    expect(page.status).toBe(200);
    const { document } = parseHTML(await page.text());
    const nav = [...document.querySelectorAll("nav a")].map((a) => a.textContent);
    expect(nav).toEqual(["Enrollment", "Monitors", "Uploads"]);
    expect((await fetch(`${base}/courses`, { headers: { cookie: cookie(student) } })).status).toBe(403);
    const create = await post("/courses", student, { code: "STU 100", title: "Mine", capacity: "5", csrf: csrfToken(WEB_SESSION_SECRET, student) });
    expect(create.status).toBe(403);
    expect(await courseCodes()).not.toContain("STU 100");
  });

  test("every response carries a strict CSP and the other security headers; static files are cached", async () => {
    const page = await fetch(`${base}/courses`, { headers: { cookie: cookie(registrar) } });
    const csp = page.headers.get("content-security-policy")!;
    expect(csp).toContain("script-src 'self'");
    expect(csp).not.toContain("unsafe-inline");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(page.headers.get("x-content-type-options")).toBe("nosniff");
    expect(page.headers.get("referrer-policy")).toBe("same-origin");
    expect(page.headers.get("cache-control")).toBe("no-store");
    const script = await fetch(`${base}/static/app.js`);
    expect(script.headers.get("content-type")).toContain("javascript");
    expect(script.headers.get("cache-control")).toContain("max-age=");
    const { document } = parseHTML(await page.text());
    expect(document.querySelectorAll("script:not([src])").length).toBe(0);
    expect(document.querySelectorAll("[style]").length).toBe(0);
  });
});

describe("a course's roster", () => {
  let courseId = "";
  const roster = async (token: string) => {
    const response = await fetch(`${base}/courses/${courseId}`, { headers: { cookie: cookie(token) } });
    const { document } = parseHTML(await response.text());
    return {
      status: response.status,
      enrolled: [...document.querySelectorAll("[data-enrolled]")].map((tr) => tr.getAttribute("data-enrolled")),
      waitlist: [...document.querySelectorAll("[data-waitlisted]")].map((tr) => `${tr.querySelector("[data-position]")?.textContent} ${tr.getAttribute("data-waitlisted")}`),
      drops: document.querySelectorAll("form[data-action=drop]").length,
      seatsTaken: document.querySelector("[data-seats-taken]")?.textContent,
    };
  };

  beforeAll(async () => {
    const client = createClient(EnrollmentServiceClient, stack.services.allocator!.grpcAddress, { caller: "test" });
    try {
      const { course } = await unary(client.createCourse.bind(client), { code: "ROST 101", title: "Rosters", capacity: 1 }, { token: registrar });
      courseId = course!.id;
      for (const studentId of ["ann", "ben", "cal"]) {
        await unary(client.enroll.bind(client), { idempotencyKey: `roster-${studentId}`, studentId, courseId, priority: 0, wait: true }, { token: registrar });
      }
    } finally {
      client.close();
    }
  });

  test("a registrar sees who holds the seat and the waitlist in order, with Drop; the courses list links to it", async () => {
    expect(await roster(registrar)).toEqual({ status: 200, enrolled: ["ann"], waitlist: ["1 ben", "2 cal"], drops: 3, seatsTaken: "1" });
    const { document } = parseHTML(await (await fetch(`${base}/courses`, { headers: { cookie: cookie(registrar) } })).text());
    expect(document.querySelector(`#course-${courseId} a[data-course-link]`)?.getAttribute("href")).toBe(`/courses/${courseId}`);
  });

  test("an operator may look but gets no Drop; a student gets 403 and no data, on the page, its stream and Drop", async () => {
    expect(await roster(await testToken("olga", ["operator"]))).toEqual({ status: 200, enrolled: ["ann"], waitlist: ["1 ben", "2 cal"], drops: 0, seatsTaken: "1" });
    for (const path of [`/courses/${courseId}`, `/live/courses/${courseId}`]) {
      const response = await fetch(`${base}${path}`, { headers: { cookie: cookie(student) } });
      expect(response.status).toBe(403);
      const body = await response.text();
      expect(body).not.toContain("ann");
      expect(body).not.toContain("ROST");
    }
    const drop = await post(`/courses/${courseId}/drop`, student, { student_id: "ann", csrf: csrfToken(WEB_SESSION_SECRET, student) });
    expect(drop.status).toBe(403);
    expect((await roster(registrar)).enrolled).toEqual(["ann"]);
  });

  test("dropping the seat holder promotes the waitlist head: the answer and the page show it", async () => {
    const csrf = csrfToken(WEB_SESSION_SECRET, registrar);
    const scripted = await post(`/courses/${courseId}/drop`, registrar, { student_id: "ann", csrf }, { accept: "application/json" });
    expect(scripted.status).toBe(200);
    const body = (await scripted.json()) as { promoted: string; html: string; message: string };
    expect(body.promoted).toBe("ben");
    expect(body.message).toBe("Dropped ann; ben got the seat.");
    const { document } = parseHTML(body.html);
    expect([...document.querySelectorAll("[data-enrolled]")].map((tr) => tr.getAttribute("data-enrolled"))).toEqual(["ben"]);
    expect(await roster(registrar)).toEqual({ status: 200, enrolled: ["ben"], waitlist: ["1 cal"], drops: 2, seatsTaken: "1" });

    // A plain form post drops too and returns to the course page; dropping someone not on it shows the allocator's words.
    const plain = await post(`/courses/${courseId}/drop`, registrar, { student_id: "cal", csrf });
    expect([plain.status, plain.headers.get("location")]).toEqual([303, `/courses/${courseId}`]);
    expect(await roster(registrar)).toEqual({ status: 200, enrolled: ["ben"], waitlist: [], drops: 1, seatsTaken: "1" });
    const again = await post(`/courses/${courseId}/drop`, registrar, { student_id: "cal", csrf });
    expect(again.status).toBeGreaterThanOrEqual(400);
    expect(parseHTML(await again.text()).document.querySelector("[role=alert]")?.textContent?.length).toBeGreaterThan(0);
  });

  test("the course's live stream sends the roster once, and again only when it changes", async () => {
    const response = await fetch(`${base}/live/courses/${courseId}`, { headers: { cookie: cookie(registrar), accept: "text/event-stream" } });
    expect(response.status).toBe(200);
    const reader = response.body!.getReader();
    let text = "";
    // Two polls' worth: the "s ago" texts age, the roster does not change.
    const until = Date.now() + 4500;
    while (Date.now() < until) {
      const chunk = await Promise.race([reader.read(), Bun.sleep(until - Date.now()).then(() => undefined)]);
      if (chunk?.value) text += new TextDecoder().decode(chunk.value);
    }
    await reader.cancel();
    expect(text.match(/event: course\n/g)?.length).toBe(1);
    expect(text).toContain('data-enrolled=\\"ben\\"');
  }, 15_000);
});

test("live streams are bounded per user; the dashboard's own series are on /metrics", async () => {
  const open: Response[] = [];
  for (let i = 0; i < 16; i++) open.push(await fetch(`${base}/live/courses`, { headers: { cookie: cookie(registrar), accept: "text/event-stream" } }));
  expect(open.every((r) => r.status === 200)).toBe(true);
  const refused = await fetch(`${base}/live/courses`, { headers: { cookie: cookie(registrar), accept: "text/event-stream" } });
  expect(refused.status).toBe(429);
  const metrics = await (await fetch(`${base}/metrics`)).text();
  expect(metrics).toMatch(/web_live_streams\{service="web"\} 16/);
  expect(metrics).toContain('web_http_requests_total{method="GET",route="/live/courses",status="429",service="web"} 1');
  await Promise.all(open.map((r) => r.body!.cancel()));
  // The streams end on the server when the browser leaves.
  const deadline = Date.now() + 10_000;
  while (!/web_live_streams\{service="web"\} 0/.test(await (await fetch(`${base}/metrics`)).text()) && Date.now() < deadline) await Bun.sleep(100);
  expect(await (await fetch(`${base}/metrics`)).text()).toMatch(/web_live_streams\{service="web"\} 0/);
});

test("a course's counts arrive on its live stream; SIGTERM ends the stream and the process exits 0", async () => {
  const response = await fetch(`${base}/live/courses`, { headers: { cookie: cookie(registrar), accept: "text/event-stream" } });
  expect(response.status).toBe(200);
  expect(response.headers.get("content-type")).toContain("text/event-stream");
  const reader = response.body!.getReader();
  let text = "";
  const deadline = Date.now() + 10_000;
  while (!text.includes("event: course") && Date.now() < deadline) text += new TextDecoder().decode((await reader.read()).value);
  expect(text).toContain("MATH 125");

  const exited = stack.web.stop();
  // The stream ends (the browser would reconnect to another replica).
  const ended = (async () => {
    for (;;) if ((await reader.read()).done) return true;
  })();
  expect(await Promise.race([ended, Bun.sleep(10_000).then(() => false)])).toBe(true);
  expect(await exited).toBe(0);
  expect(stack.web.logs.some((line) => line.msg === "shutting down")).toBe(true);
}, 30_000);
