/**
 * The links in emails, served on the notifier's HTTP port: confirming a subscription (double
 * opt-in) and unsubscribing. A GET only shows a page with a button; the change happens on POST,
 * because mail scanners fetch links on their own. The unsubscribe POST is also RFC 8058's
 * one-click target (List-Unsubscribe-Post).
 */
import type { Sql } from "@coursemesh/shared/db";
import { ServiceError } from "@coursemesh/shared/grpc/errors";
import type { Logger } from "@coursemesh/shared/logger";
import { escapeHtml } from "./messages.ts";
import { describeTarget } from "./recipients.ts";
import { confirm, unsubscribeByToken } from "./subscriptions.ts";


function page(title: string, body: string, status = 200): Response {
  const html = `<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>${escapeHtml(title)}</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 36rem; margin: 3rem auto; line-height: 1.5">
<h1 style="font-size: 1.4rem">${escapeHtml(title)}</h1>${body}</body></html>`;
  return new Response(html, {
    status,
    headers: { "content-type": "text/html; charset=utf-8", "cache-control": "no-store", "referrer-policy": "no-referrer", "x-frame-options": "DENY" },
  });
}

function buttonForm(action: string, token: string, label: string): string {
  return `<form method="post" action="${escapeHtml(action)}"><input type="hidden" name="token" value="${escapeHtml(token)}">
<button type="submit" style="font-size: 1rem; padding: .5rem 1.2rem">${escapeHtml(label)}</button></form>`;
}

async function tokenOf(request: Request, url: URL): Promise<string> {
  const fromQuery = url.searchParams.get("token");
  if (fromQuery) return fromQuery;
  const type = request.headers.get("content-type") ?? "";
  if (type.includes("application/x-www-form-urlencoded") || type.includes("multipart/form-data")) {
    const form = await request.formData().catch(() => undefined);
    const value = form?.get("token");
    return typeof value === "string" ? value : "";
  }
  return "";
}

/** The HTTP handler for confirmation and unsubscribe links; undefined for other paths. */
export function linkRoutes(sql: Sql, logger: Logger): (request: Request) => Promise<Response | undefined> {
  return async (request) => {
    const url = new URL(request.url);
    if (url.pathname === "/v1/subscriptions/confirm") {
      const token = await tokenOf(request, url);
      if (request.method === "GET") {
        if (!token) return page("Confirmation link incomplete", "<p>The link has no token. Open the whole link from the email.</p>", 400);
        return page("Confirm notifications", `<p>Press the button to start receiving these coursemesh notifications.</p>${buttonForm(url.pathname, token, "Confirm")}`);
      }
      if (request.method !== "POST") return page("Method not allowed", "<p>Use the link from the email.</p>", 405);
      try {
        const subscription = await confirm(sql, token);
        return page(
          "Subscription confirmed",
          `<p>${escapeHtml(subscription.address)} will get ${escapeHtml(describeTarget({ kind: subscription.filter_kind, value: subscription.filter_value }))}.</p>
<p>Every email has an unsubscribe link.</p>`,
        );
      } catch (error) {
        if (error instanceof ServiceError) {
          const status = error.reason === "CONFIRMATION_TOKEN_EXPIRED" ? 410 : error.reason === "CONFIRMATION_TOKEN_INVALID" && token ? 404 : 400;
          return page("Cannot confirm", `<p>${escapeHtml(error.message)}</p>`, status);
        }
        logger.error({ err: error }, "confirmation failed");
        return page("Something went wrong", "<p>Try the link again in a minute.</p>", 503);
      }
    }
    if (url.pathname === "/v1/subscriptions/unsubscribe") {
      const token = await tokenOf(request, url);
      if (!token) return page("Unsubscribe link incomplete", "<p>The link has no token. Open the whole link from the email.</p>", 400);
      if (request.method === "GET") {
        return page("Unsubscribe", `<p>Press the button to stop these coursemesh notifications.</p>${buttonForm(url.pathname, token, "Unsubscribe")}`);
      }
      if (request.method !== "POST") return page("Method not allowed", "<p>Use the link from the email.</p>", 405);
      try {
        const removed = await unsubscribeByToken(sql, token);
        return page("Unsubscribed", removed ? `<p>${escapeHtml(removed.address)} will get no more of these notifications.</p>` : "<p>You are not subscribed (any more).</p>");
      } catch (error) {
        logger.error({ err: error }, "unsubscribe failed");
        return page("Something went wrong", "<p>Try the link again in a minute.</p>", 503);
      }
    }
    return undefined;
  };
}
