/**
 * Recipients: validating and normalising email addresses, webhook URLs and subscription filters,
 * and deciding what a caller may subscribe to. No I/O besides the SSRF guard's name resolution.
 */
import { createHash, randomBytes } from "node:crypto";
import { z } from "zod";
import type { Principal } from "@coursemesh/shared/auth";
import { hasRole } from "@coursemesh/shared/auth";
import { invalidArgument, permissionDenied } from "@coursemesh/shared/grpc/errors";
import { assertPublicUrl, HostNotAllowedError, type Resolver } from "@coursemesh/shared/net/ssrf";

export type ChannelName = "EMAIL" | "WEBHOOK";
export type FilterKind = "monitor" | "course" | "student" | "job";

/** What a subscription listens to: one kind of target and its id. */
export interface Target {
  kind: FilterKind;
  value: string;
}

const emailSchema = z.email();
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// Student ids are token subjects: printable, no spaces, bounded.
const SUBJECT = /^[\x21-\x7e]{1,256}$/;

/** Validates an email address and returns it lower-cased (mailboxes are matched case-insensitively). */
export function normalizeEmail(raw: string, field = "address"): string {
  const trimmed = raw.trim();
  // CR/LF would let an address inject headers; zod's check already refuses them, this says why.
  if (trimmed === "" || trimmed.length > 254 || /[\r\n]/.test(trimmed) || !emailSchema.safeParse(trimmed).success) {
    throw invalidArgument("ADDRESS_INVALID", `"${raw.slice(0, 100)}" is not a valid email address`, {
      fieldViolations: [{ field, description: "must be an email address like name@example.edu" }],
    });
  }
  return trimmed.toLowerCase();
}

export interface UrlGuard {
  allowPrivate: boolean;
  resolve?: Resolver;
}

/** Validates a webhook URL (http/https, SSRF guard) and returns it normalised. */
export async function normalizeWebhookUrl(raw: string, guard: UrlGuard, field = "address"): Promise<string> {
  const trimmed = raw.trim();
  if (trimmed === "" || trimmed.length > 2048) {
    throw invalidArgument("ADDRESS_INVALID", "a webhook needs an http or https URL (at most 2048 characters)", {
      fieldViolations: [{ field, description: "must be an http(s) URL" }],
    });
  }
  let parsed: URL;
  try {
    parsed = new URL(trimmed);
  } catch {
    throw invalidArgument("ADDRESS_INVALID", `"${trimmed.slice(0, 100)}" is not a URL`, { fieldViolations: [{ field, description: "must be an http(s) URL" }] });
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw invalidArgument("ADDRESS_INVALID", `webhooks must use http or https, not ${parsed.protocol}`, {
      fieldViolations: [{ field, description: "must be an http(s) URL" }],
    });
  }
  try {
    return (await assertPublicUrl(trimmed, guard)).href;
  } catch (error) {
    if (!(error instanceof HostNotAllowedError)) throw error;
    throw invalidArgument("URL_NOT_ALLOWED", `webhook URL not allowed: ${error.message}`, { fieldViolations: [{ field, description: error.message }] });
  }
}

/** Checks an id of a filter target: UUIDs for monitors, courses and jobs; a token subject for students. */
export function validateTarget(target: Target, field = "filter"): Target {
  const value = target.value.trim();
  const ok = target.kind === "student" ? SUBJECT.test(value) : UUID.test(value);
  if (!ok) {
    throw invalidArgument("INVALID_ID", `${target.kind}_id "${target.value.slice(0, 80)}" is not a valid id`, {
      fieldViolations: [{ field: `${field}.${target.kind}_id`, description: target.kind === "student" ? "must be a student id (no spaces)" : "must be a UUID" }],
    });
  }
  return { kind: target.kind, value: target.kind === "student" ? value : value.toLowerCase() };
}

/** Whether the caller sees every subscription and notification, not only their own. */
export function seesAll(principal: Principal | null): boolean {
  return hasRole(principal, "operator", "service");
}

/**
 * Who may listen to what: enrollment outcomes are personal, so a student subscribes only to their
 * own student_id and course-wide outcomes are for registrars, operators and services.
 */
export function assertMaySubscribe(principal: Principal, target: Target): void {
  if (hasRole(principal, "registrar", "operator", "service")) return;
  if (target.kind === "student" && target.value !== principal.subject) {
    throw permissionDenied("FILTER_NOT_ALLOWED", "students can subscribe only to their own enrollment outcomes (student_id = your own id)");
  }
  if (target.kind === "course") {
    throw permissionDenied("FILTER_NOT_ALLOWED", "course-wide enrollment outcomes are for registrars; subscribe to your own student_id instead");
  }
}

/** A random token for links (confirmation, unsubscribe), URL-safe. */
export function newLinkToken(): string {
  return randomBytes(32).toString("base64url");
}

/** The stored form of a confirmation token: its SHA-256, so a database leak confirms nothing. */
export function hashToken(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/** A Standard Webhooks signing secret: `whsec_` + 32 random bytes in base64. */
export function newWebhookSecret(): string {
  return `whsec_${randomBytes(32).toString("base64")}`;
}

/** Human words for a filter target, for emails and confirmation pages. */
export function describeTarget(target: Target): string {
  switch (target.kind) {
    case "monitor":
      return `seat changes of monitor ${target.value}`;
    case "course":
      return `enrollment outcomes in course ${target.value}`;
    case "student":
      return `enrollment outcomes of student ${target.value}`;
    case "job":
      return `the result of upload job ${target.value}`;
  }
}
