import { describe, expect, test } from "bun:test";
import { Metadata } from "@grpc/grpc-js";
import { createAuthenticator, mintToken } from "@coursemesh/shared/auth.ts";
import { alreadyExists, GrpcStatus, invalidArgument, notFound, resourceExhausted, toGrpcError, unavailable } from "@coursemesh/shared/grpc/errors.ts";
import { TEST_JWT_SECRET } from "@coursemesh/shared/testing/harness.ts";
import { toWebError } from "../src/errors.ts";
import { parseHTML } from "linkedom";
import { Monitor, SeatChange } from "@coursemesh/proto/coursemesh/scraper/v1/scraper.ts";
import { Notification, NotificationStatus } from "@coursemesh/proto/coursemesh/notifier/v1/notifier.ts";
import { ago } from "../src/format.ts";
import { historyBody } from "../src/pages/monitors.ts";
import { escapeHtml, html, raw } from "../src/html.ts";
import { areasFor } from "../src/roles.ts";
import { csrfMatches, csrfToken, parseCookies, sameOrigin, sessionCookie, sessionOf, SESSION_COOKIE } from "../src/session.ts";

const SESSION_SECRET = "web-session-secret-0123456789abcdefghij";
const authenticator = createAuthenticator({ AUTH_DISABLED: false, AUTH_JWT_SECRET: TEST_JWT_SECRET, AUTH_JWKS_URL: undefined, AUTH_ISSUER: undefined, AUTH_AUDIENCE: undefined });

describe("html", () => {
  test("every interpolation is escaped unless it is already markup", () => {
    const evil = `<script>alert("x")</script>' onmouseover='x`;
    const out = html`<p title="${evil}">${evil}</p>${raw("<hr>")}${html`<b>${"&"}</b>`}`.value;
    expect(out).toBe(`<p title="${escapeHtml(evil)}">${escapeHtml(evil)}</p><hr><b>&amp;</b>`);
    expect(out).not.toContain("<script>");
    expect(out).not.toContain("' onmouseover");
  });

  test("lists are joined; null, undefined and false render nothing; numbers render", () => {
    expect(html`<ul>${["a", "<b>"].map((x) => html`<li>${x}</li>`)}</ul>`.value).toBe("<ul><li>a</li><li>&lt;b&gt;</li></ul>");
    expect(html`${null}${undefined}${false}${0}`.value).toBe("0");
  });
});

describe("session and CSRF", () => {
  test("a session cookie is HttpOnly, SameSite, for the whole site, and lives no longer than its token", async () => {
    const token = await mintToken({ subject: "alice", roles: ["student"], secret: TEST_JWT_SECRET, expiresIn: "1h" });
    const cookie = sessionCookie(token, { secure: false });
    expect(cookie).toStartWith(`${SESSION_COOKIE}=${token};`);
    expect(cookie).toContain("HttpOnly");
    expect(cookie).toContain("SameSite=Lax");
    expect(cookie).toContain("Path=/");
    const maxAge = Number(/Max-Age=(\d+)/.exec(cookie)![1]);
    expect(maxAge).toBeGreaterThan(3500);
    expect(maxAge).toBeLessThanOrEqual(3600);
    expect(cookie).not.toContain("Secure");
    expect(sessionCookie(token, { secure: true })).toContain("; Secure");
  });

  test("only a token the deployment trusts makes a session; forged, expired and garbage cookies make none", async () => {
    const good = await mintToken({ subject: "alice", roles: ["student"], secret: TEST_JWT_SECRET });
    const forged = await mintToken({ subject: "alice", roles: ["operator"], secret: "another-secret-0123456789abcdefghijkl" });
    const expired = await mintToken({ subject: "alice", roles: ["student"], secret: TEST_JWT_SECRET, expiresIn: "-1m" });
    const request = (cookie: string) => new Request("http://web.test/monitors", { headers: { cookie } });
    expect((await sessionOf(request(`${SESSION_COOKIE}=${good}`), authenticator))?.subject).toBe("alice");
    for (const bad of [forged, expired, "not-a-jwt", `${good}x`, ""]) expect(await sessionOf(request(`${SESSION_COOKIE}=${bad}`), authenticator)).toBeNull();
    expect(await sessionOf(new Request("http://web.test/"), authenticator)).toBeNull();
  });

  test("the CSRF token is bound to the session and compared in constant time", () => {
    const token = csrfToken(SESSION_SECRET, "session-a");
    expect(csrfMatches(SESSION_SECRET, "session-a", token)).toBe(true);
    expect(csrfMatches(SESSION_SECRET, "session-b", token)).toBe(false);
    expect(csrfMatches("another-secret-0123456789abcdefghijkl", "session-a", token)).toBe(false);
    expect(csrfMatches(SESSION_SECRET, "session-a", "")).toBe(false);
    expect(csrfMatches(SESSION_SECRET, "session-a", token.slice(1))).toBe(false);
  });

  test("a change must come from the dashboard's own origin", () => {
    const post = (headers: Record<string, string>) => new Request("http://web.test/monitors", { method: "POST", headers: { host: "web.test", ...headers } });
    expect(sameOrigin(post({ origin: "http://web.test" }))).toBe(true);
    expect(sameOrigin(post({ origin: "https://evil.test" }))).toBe(false);
    expect(sameOrigin(post({ origin: "null" }))).toBe(false);
    expect(sameOrigin(post({ referer: "https://evil.test/page" }))).toBe(false);
    expect(sameOrigin(post({}))).toBe(true);
  });

  test("cookies are parsed by name; the first of a repeated name wins", () => {
    expect(parseCookies("a=1; cm_session=x.y.z; a=2")).toEqual(new Map([["a", "1"], ["cm_session", "x.y.z"]]));
    expect(parseCookies(null).size).toBe(0);
  });
});

describe("errors from the services", () => {
  const wire = (error: Parameters<typeof toGrpcError>[0]) => {
    const encoded = toGrpcError(error);
    return Object.assign(new Error(encoded.details), { code: encoded.code, details: encoded.details, metadata: encoded.metadata as Metadata });
  };

  test("field violations land on the form's fields with the service's own words", () => {
    const error = wire(
      invalidArgument("EMAIL_INVALID", 'notify_emails[1]: "nope" is not an email address', {
        fieldViolations: [
          { field: "notify_emails[1]", description: '"nope" is not an email address' },
          { field: "extractor.beartracks.section_label", description: "must not be empty" },
        ],
      }),
    );
    const mapped = toWebError(error, { "extractor.beartracks.section_label": "section" });
    expect(mapped.status).toBe(400);
    expect(mapped.message).toBe('notify_emails[1]: "nope" is not an email address');
    expect(mapped.fields).toEqual({ notify_emails: '"nope" is not an email address', section: "must not be empty" });
  });

  test("a reason without field violations can still name its field", () => {
    const mapped = toWebError(wire(alreadyExists("COURSE_CODE_TAKEN", 'a course with code "C 1" already exists')), { COURSE_CODE_TAKEN: "code" });
    expect(mapped.status).toBe(409);
    expect(mapped.fields).toEqual({ code: 'a course with code "C 1" already exists' });
  });

  test("codes map to the HTTP status a browser understands; internals never leak", () => {
    expect(toWebError(wire(notFound("MONITOR_NOT_FOUND", "no monitor m1"))).status).toBe(404);
    expect(toWebError(wire(resourceExhausted("QUEUE_FULL", "try later", { retryDelayMs: 2000 })))).toMatchObject({ status: 429, retryAfterMs: 2000 });
    expect(toWebError(wire(resourceExhausted("FILE_TOO_LARGE", "too big"))).status).toBe(413);
    expect(toWebError(wire(unavailable("DEPENDENCY_UNAVAILABLE", "a backing service is unavailable; retry shortly"))).status).toBe(503);
    const transport = Object.assign(new Error("14 UNAVAILABLE: No connection established"), { code: GrpcStatus.UNAVAILABLE, details: "No connection established. Last error: connect ECONNREFUSED 127.0.0.1:1" });
    expect(toWebError(transport).message).not.toContain("127.0.0.1");
    const internal = Object.assign(new Error("boom"), { code: GrpcStatus.INTERNAL, details: "relation scraper.monitors does not exist" });
    expect(toWebError(internal)).toMatchObject({ status: 500 });
    expect(toWebError(internal).message).not.toContain("relation");
  });
});

describe("what each role is offered", () => {
  const principal = (...roles: ("student" | "registrar" | "operator" | "service")[]) => ({ subject: "u", roles });
  test("students enroll, registrars manage courses, operators see everything the API lets them", () => {
    expect(areasFor(principal("student"))).toEqual(["enrollment", "monitors", "uploads"]);
    expect(areasFor(principal("registrar"))).toEqual(["courses", "enrollment", "monitors", "uploads"]);
    expect(areasFor(principal("operator"))).toEqual(["courses", "monitors", "uploads"]);
    expect(areasFor(principal())).toEqual([]);
  });
});

test("relative times read like a person would say them", () => {
  const now = Date.parse("2026-01-01T12:00:00Z");
  expect(ago(new Date(now - 12_000), now)).toBe("12 s ago");
  expect(ago(new Date(now - 3 * 60_000 - 5000), now)).toBe("3 min ago");
  expect(ago(new Date(now - 2 * 3600_000), now)).toBe("2 h ago");
});

test("the history pairs each seat change with its own event's notifications, however close in time", () => {
  const at = (ms: number) => new Date(Date.parse("2026-01-01T12:00:00Z") + ms);
  const monitor = Monitor.fromPartial({ id: "m-1", label: "CMPUT 201 LEC A1" });
  const changes = [
    SeatChange.fromPartial({ id: "c-1", eventId: "e-1", previous: { open: 0 }, current: { open: 1 }, observedAt: at(0) }),
    SeatChange.fromPartial({ id: "c-2", eventId: "e-2", previous: { open: 1 }, current: { open: 2 }, observedAt: at(300) }),
  ];
  // The first change's email is sent after the second change was seen: by time it would look like the second's.
  const notifications = [
    Notification.fromPartial({ eventId: "e-1", eventType: "seats.changed", recipient: "first@example.edu", subject: "1 open", status: NotificationStatus.NOTIFICATION_STATUS_SENT, createdAt: at(900) }),
    Notification.fromPartial({ eventId: "e-2", eventType: "seats.changed", recipient: "second@example.edu", subject: "2 open", status: NotificationStatus.NOTIFICATION_STATUS_SENT, createdAt: at(950) }),
  ];
  const { document } = parseHTML(`<div>${historyBody(monitor, changes, notifications).value}</div>`);
  const items = [...document.querySelectorAll("[data-history-list] > li")].map((li) => [li.querySelector("strong")?.textContent, [...li.querySelectorAll("li")].map((n) => n.textContent)]);
  expect(items).toEqual([
    ["1 open → 2 open", ["Sent: 2 open to second@example.edu"]],
    ["0 open → 1 open", ["Sent: 1 open to first@example.edu"]],
  ]);
});
