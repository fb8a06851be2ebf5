/**
 * Webhooks: a JSON POST signed the Standard Webhooks way (`webhook-id`, `webhook-timestamp`,
 * `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`), so receivers can verify it
 * with any Standard Webhooks library. The URL is checked by the SSRF guard before every attempt:
 * what a name resolves to can change after Subscribe.
 */
import { createHmac } from "node:crypto";
import { assertPublicUrl, HostNotAllowedError } from "@coursemesh/shared/net/ssrf";
import type { UrlGuard } from "./recipients.ts";
import { DeliveryError } from "./smtp.ts";

/** The signing key of a secret: `whsec_<base64>` decodes to bytes, anything else is used as UTF-8. */
export function signingKey(secret: string): Buffer {
  return secret.startsWith("whsec_") ? Buffer.from(secret.slice(6), "base64") : Buffer.from(secret, "utf8");
}

/** The `webhook-signature` header value for one attempt. */
export function signWebhook(secret: string, id: string, timestampSeconds: number, body: string): string {
  const signature = createHmac("sha256", signingKey(secret)).update(`${id}.${timestampSeconds}.${body}`).digest("base64");
  return `v1,${signature}`;
}

export interface OutgoingWebhook {
  url: string;
  /** Stable per delivery (`webhook-id`), so a receiver can drop a resend. */
  id: string;
  body: string;
  /** Unsigned when empty (a SendTest to a URL without a subscription). */
  secret: string | null;
}

export interface WebhookOptions {
  timeoutMs: number;
  guard: UrlGuard;
}

function retryAfterMs(header: string | null): number | undefined {
  if (!header) return undefined;
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(header);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

/** POSTs one webhook; resolves on 2xx, throws a DeliveryError (4xx permanent except 408/425/429; 5xx and network errors transient). */
export async function postWebhook(hook: OutgoingWebhook, options: WebhookOptions): Promise<void> {
  try {
    await assertPublicUrl(hook.url, options.guard);
  } catch (error) {
    if (error instanceof HostNotAllowedError) throw new DeliveryError(`webhook URL not allowed: ${error.message}`, true);
    throw error;
  }
  const timestamp = Math.floor(Date.now() / 1000);
  const headers: Record<string, string> = {
    "content-type": "application/json",
    "user-agent": "coursemesh-notifier/1",
    "webhook-id": hook.id,
    "webhook-timestamp": String(timestamp),
  };
  if (hook.secret) headers["webhook-signature"] = signWebhook(hook.secret, hook.id, timestamp, hook.body);
  let response: Response;
  try {
    response = await fetch(hook.url, {
      method: "POST",
      headers,
      body: hook.body,
      // A redirect could point anywhere, past the guard: refuse rather than follow.
      redirect: "manual",
      signal: AbortSignal.timeout(options.timeoutMs),
    });
  } catch (error) {
    const name = (error as Error).name;
    const reason = name === "TimeoutError" || name === "AbortError" ? `no answer within ${options.timeoutMs} ms` : (error as Error).message;
    throw new DeliveryError(`webhook POST failed: ${reason}`, false);
  }
  // The body is not needed; drain it so the connection can be reused.
  const excerpt = (await response.text().catch(() => "")).replace(/\s+/g, " ").slice(0, 200);
  if (response.status >= 200 && response.status < 300) return;
  const detail = `webhook answered HTTP ${response.status}${excerpt ? `: ${excerpt}` : ""}`;
  if (response.status >= 300 && response.status < 400) throw new DeliveryError(`${detail} (redirects are not followed; subscribe the final URL)`, true);
  const transient = response.status >= 500 || [408, 425, 429].includes(response.status);
  throw new DeliveryError(detail, !transient, transient ? retryAfterMs(response.headers.get("retry-after")) : undefined);
}
