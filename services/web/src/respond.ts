/** Responses with the dashboard's security headers. */
import type { Html } from "./html.ts";

/** No inline script or style, nothing framed, nothing loaded from elsewhere. */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "form-action 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
  "object-src 'none'",
].join("; ");

/** Adds the security headers every response carries. */
export function withSecurityHeaders(response: Response): Response {
  const headers = response.headers;
  headers.set("content-security-policy", CONTENT_SECURITY_POLICY);
  headers.set("x-content-type-options", "nosniff");
  headers.set("referrer-policy", "same-origin");
  headers.set("x-frame-options", "DENY");
  headers.set("cross-origin-opener-policy", "same-origin");
  if (!headers.has("cache-control")) headers.set("cache-control", "no-store");
  return response;
}

/** An HTML page. */
export function htmlResponse(body: Html, init: { status?: number; headers?: Record<string, string> } = {}): Response {
  return new Response(body.value, { status: init.status ?? 200, headers: { "content-type": "text/html; charset=utf-8", ...init.headers } });
}

/** A redirect after a form post (303: the browser follows with GET). */
export function redirect(location: string, headers: Record<string, string> = {}): Response {
  return new Response(null, { status: 303, headers: { location, ...headers } });
}

/** Whether the request comes from the page's script (fetch) rather than a plain form or link. */
export function wantsJson(request: Request): boolean {
  return (request.headers.get("accept") ?? "").includes("application/json") || request.headers.get("x-requested-with") === "fetch";
}
