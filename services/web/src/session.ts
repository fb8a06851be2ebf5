/**
 * The dashboard's session: the user's own bearer token in an HttpOnly cookie, verified on every
 * request with the shared authenticator, and CSRF tokens keyed by WEB_SESSION_SECRET.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { decodeJwt } from "jose";
import type { Authenticator, Principal } from "@coursemesh/shared/auth.ts";

export const SESSION_COOKIE = "cm_session";
/** Form field and header that carry the CSRF token. */
export const CSRF_FIELD = "csrf";
export const CSRF_HEADER = "x-csrf-token";

/** The cookies of a request, by name. */
export function parseCookies(header: string | null): Map<string, string> {
  const cookies = new Map<string, string>();
  for (const part of (header ?? "").split(";")) {
    const eq = part.indexOf("=");
    if (eq <= 0) continue;
    const name = part.slice(0, eq).trim();
    if (!cookies.has(name)) cookies.set(name, part.slice(eq + 1).trim());
  }
  return cookies;
}

/** `Set-Cookie` for a signed-in session: lives no longer than the token does. */
export function sessionCookie(token: string, options: { secure: boolean; nowMs?: number }): string {
  const exp = decodeJwt(token).exp;
  const maxAge = exp === undefined ? 12 * 3600 : Math.max(0, exp - Math.floor((options.nowMs ?? Date.now()) / 1000));
  return `${SESSION_COOKIE}=${token}; Path=/; Max-Age=${maxAge}; HttpOnly; SameSite=Lax${options.secure ? "; Secure" : ""}`;
}

/** `Set-Cookie` that removes a cookie of the dashboard's (the session by default). */
export function clearedSessionCookie(options: { secure: boolean }, name = SESSION_COOKIE): string {
  return `${name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax${options.secure ? "; Secure" : ""}`;
}

/** A token is a JWT: three base64url parts. Anything else never reaches the verifier or a header. */
export function looksLikeJwt(token: string): boolean {
  return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(token) && token.length <= 8192;
}

/** The signed-in user of a request, or null when the cookie is missing, malformed, forged or expired. */
export async function sessionOf(request: Request, authenticator: Authenticator): Promise<Principal | null> {
  const token = parseCookies(request.headers.get("cookie")).get(SESSION_COOKIE);
  if (!token || !looksLikeJwt(token)) return null;
  return verifyToken(token, authenticator);
}

/** The principal of a bearer token, or null when the deployment does not trust it. */
export async function verifyToken(token: string, authenticator: Authenticator): Promise<Principal | null> {
  if (!looksLikeJwt(token)) return null;
  try {
    const principal = await authenticator.authenticate(`Bearer ${token}`);
    return principal && principal.token === token ? principal : null;
  } catch {
    return null;
  }
}

/** The CSRF token of a session: HMAC(WEB_SESSION_SECRET, session token). */
export function csrfToken(secret: string, sessionToken: string): string {
  return createHmac("sha256", secret).update(sessionToken).digest("base64url");
}

/** Whether `given` is the session's CSRF token (constant-time). */
export function csrfMatches(secret: string, sessionToken: string, given: string | null | undefined): boolean {
  if (!given) return false;
  const expected = Buffer.from(csrfToken(secret, sessionToken));
  const actual = Buffer.from(given);
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}

/**
 * Whether a state-changing request comes from the dashboard's own pages: its Origin (or, failing
 * that, Referer) names this host. Browsers send Origin on every POST; a request with neither (curl)
 * still needs the CSRF token.
 */
export function sameOrigin(request: Request): boolean {
  const source = request.headers.get("origin") ?? request.headers.get("referer");
  if (!source) return true;
  if (source === "null") return false;
  const host = request.headers.get("host") ?? new URL(request.url).host;
  try {
    return new URL(source).host === host;
  } catch {
    return false;
  }
}
