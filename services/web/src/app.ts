/**
 * The dashboard's HTTP routes: sign-in, pages per area, form actions and live streams. Every
 * request but sign-in and static files needs a valid session cookie; every change needs the CSRF
 * token and a same-origin request.
 */
import type { Authenticator, Principal } from "@coursemesh/shared/auth.ts";
import type { Logger } from "@coursemesh/shared/logger.ts";
import { SpanKind, withSpan } from "@coursemesh/shared/telemetry.ts";
import { webRequests } from "./metrics.ts";
import { signInPage } from "./pages/signin.ts";
import { htmlResponse, redirect, wantsJson, withSecurityHeaders } from "./respond.ts";
import { areasFor } from "./roles.ts";
import { clearedSessionCookie, csrfMatches, csrfToken, CSRF_FIELD, CSRF_HEADER, sameOrigin, sessionCookie, sessionOf, verifyToken } from "./session.ts";
import { serveStatic } from "./static.ts";

/** A parsed form body. */
export type Form = Awaited<ReturnType<Request["formData"]>>;

/** What a route handler gets. */
export interface RouteContext {
  request: Request;
  url: URL;
  params: Record<string, string>;
  principal: Principal;
  /** The session's bearer token, sent on each backend call. */
  token: string;
  csrf: string;
  /** The parsed urlencoded body of a form post (not for streamed uploads). */
  form?: Form;
}

export type RouteHandler = (ctx: RouteContext) => Promise<Response> | Response;

export interface Route {
  method: "GET" | "POST";
  /** Path with `:name` segments. */
  path: string;
  handler: RouteHandler;
  /** The body is streamed by the handler, which checks the CSRF field itself. */
  streamedBody?: boolean;
}

export interface WebAppOptions {
  authenticator: Authenticator;
  sessionSecret: string;
  cookieSecure: boolean;
  logger: Logger;
  routes: Route[];
}

interface CompiledRoute extends Route {
  pattern: RegExp;
  names: string[];
}

function compile(route: Route): CompiledRoute {
  const names: string[] = [];
  const source = route.path.replace(/:([a-z]+)/g, (_, name: string) => {
    names.push(name);
    return "([^/]+)";
  });
  return { ...route, pattern: new RegExp(`^${source}$`), names };
}

/** 403 for a change that failed the origin or CSRF check: JSON for the page's script, text for a plain form. */
function refusedChange(request: Request, message: string): Response {
  if (wantsJson(request)) return Response.json({ error: message }, { status: 403 });
  return new Response(message, { status: 403, headers: { "content-type": "text/plain; charset=utf-8" } });
}

/** The route pattern a path matched, for metric labels. */
function routeLabel(pathname: string, routes: CompiledRoute[]): string {
  if (pathname.startsWith("/static/")) return "/static";
  if (pathname === "/" || pathname === "/signin" || pathname === "/signout") return pathname;
  return routes.find((route) => route.pattern.test(pathname))?.path ?? "other";
}

/** The request handler of the dashboard (falls through to the ops routes for anything it does not know). */
export function createWebApp(options: WebAppOptions): (request: Request) => Promise<Response | undefined> {
  const routes = options.routes.map(compile);
  const cookieOptions = { secure: options.cookieSecure };

  function signedOut(request: Request, hadCookie: boolean): Response {
    const headers: Record<string, string> = hadCookie ? { "set-cookie": clearedSessionCookie(cookieOptions) } : {};
    if (wantsJson(request) || (request.headers.get("accept") ?? "").includes("text/event-stream")) {
      return Response.json({ error: "sign in first", signIn: "/signin" }, { status: 401, headers });
    }
    // A page, or a plain form post from an expired session: to the sign-in page, nothing done.
    return new Response(null, { status: request.method === "GET" ? 302 : 303, headers: { location: "/signin", ...headers } });
  }

  async function signIn(request: Request): Promise<Response> {
    if (!sameOrigin(request)) return htmlResponse(signInPage({ error: "This form must be sent from the dashboard itself." }), { status: 403 });
    const form = await request.formData().catch(() => undefined);
    const token = String(form?.get("token") ?? "").trim().replace(/^Bearer\s+/i, "");
    const principal = token ? await verifyToken(token, options.authenticator) : null;
    if (!principal) {
      return htmlResponse(signInPage({ error: token ? "This token is not valid here: it is malformed, expired or not signed by a key this deployment trusts." : "Paste a token to sign in." }), {
        status: 401,
      });
    }
    options.logger.info({ subject: principal.subject, roles: principal.roles }, "signed in");
    return redirect("/", { "set-cookie": sessionCookie(token, cookieOptions) });
  }

  async function handle(request: Request): Promise<Response | undefined> {
    const url = new URL(request.url);
    const method = request.method === "HEAD" ? "GET" : request.method;
    if (url.pathname.startsWith("/static/")) return serveStatic(url.pathname);
    if (url.pathname === "/signin") {
      if (method === "GET") return htmlResponse(signInPage());
      if (method === "POST") return signIn(request);
    }
    const hadCookie = (request.headers.get("cookie") ?? "").includes("cm_session=");
    if (url.pathname === "/signout" && method === "POST") {
      const principal = await sessionOf(request, options.authenticator);
      const form = await request.formData().catch(() => undefined);
      if (principal && (!sameOrigin(request) || !csrfMatches(options.sessionSecret, principal.token!, String(form?.get(CSRF_FIELD) ?? "")))) {
        return refusedChange(request, "The form is out of date (its CSRF token does not match your session); reload the page and try again.");
      }
      return redirect("/signin", { "set-cookie": clearedSessionCookie(cookieOptions) });
    }

    let matched: { route: CompiledRoute; params: Record<string, string> } | undefined;
    let pathKnown = url.pathname === "/";
    for (const route of routes) {
      const match = route.pattern.exec(url.pathname);
      if (!match) continue;
      pathKnown = true;
      if (route.method !== method) continue;
      try {
        matched = { route, params: Object.fromEntries(route.names.map((name, i) => [name, decodeURIComponent(match[i + 1]!)])) };
      } catch {
        return new Response("bad request: the address is malformed", { status: 400 });
      }
      break;
    }
    if (!pathKnown) return undefined;

    // Nothing but sign-in and static files is shown without a valid session: never data.
    const principal = await sessionOf(request, options.authenticator);
    if (!principal) return signedOut(request, hadCookie);
    const token = principal.token!;
    const csrf = csrfToken(options.sessionSecret, token);

    if (url.pathname === "/" && method === "GET") return redirect(`/${areasFor(principal)[0] ?? "monitors"}`);
    if (!matched) return new Response("method not allowed", { status: 405 });

    let form: Form | undefined;
    if (method !== "GET") {
      if (!sameOrigin(request)) return refusedChange(request, "This change did not come from the dashboard's own pages, so it was refused.");
      if (!matched.route.streamedBody) {
        const type = request.headers.get("content-type") ?? "";
        form = type.includes("form") ? await request.formData().catch(() => undefined) : undefined;
        const given = request.headers.get(CSRF_HEADER) ?? String(form?.get(CSRF_FIELD) ?? "");
        if (!csrfMatches(options.sessionSecret, token, given)) {
          return refusedChange(request, "The form is out of date (its CSRF token does not match your session); reload the page and try again.");
        }
      }
    }
    const route = matched.route;
    return withSpan(`web.${method} ${route.path}`, { kind: SpanKind.SERVER, attributes: { "http.request.method": method, "http.route": route.path } }, async (span) => {
      const response = await route.handler({ request, url, params: matched.params, principal, token, csrf, form });
      span.setAttribute("http.response.status_code", response.status);
      return response;
    });
  }

  return async (request) => {
    const response = await handle(request);
    if (!response) return undefined;
    webRequests.inc({ method: request.method, route: routeLabel(new URL(request.url).pathname, routes), status: String(response.status) });
    return withSecurityHeaders(response);
  };
}
