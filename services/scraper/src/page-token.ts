/**
 * List page tokens: opaque to clients, they carry the last id returned (lists are keyset-paged on
 * UUIDv7 ids) and a fingerprint of the query, so a token used with a different query is refused
 * instead of silently paging something else.
 */
import { createHash } from "node:crypto";
import { invalidArgument } from "@coursemesh/shared/grpc/errors.ts";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function fingerprint(query: unknown): string {
  return createHash("sha256").update(JSON.stringify(query)).digest("base64url").slice(0, 16);
}

/** A token for the page after `lastId` of `query`. */
export function encodePageToken(query: unknown, lastId: string): string {
  return Buffer.from(JSON.stringify({ q: fingerprint(query), after: lastId })).toString("base64url");
}

/** The id to continue after, or null for the first page; INVALID_PAGE_TOKEN if the token is not ours for this query. */
export function decodePageToken(token: string, query: unknown): string | null {
  if (!token) return null;
  try {
    const parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as { q?: unknown; after?: unknown };
    if (parsed.q === fingerprint(query) && typeof parsed.after === "string" && UUID.test(parsed.after)) return parsed.after;
  } catch {
    // fall through to the refusal
  }
  throw invalidArgument("INVALID_PAGE_TOKEN", "page_token is not one this service issued for this query; start again without it", {
    fieldViolations: [{ field: "page_token", description: "not issued for this query" }],
  });
}

/** page_size as the contract says: 0 → 50, above 1000 → 1000. */
export function pageSize(requested: number): number {
  if (requested <= 0) return 50;
  return Math.min(requested, 1000);
}

/** Whether `id` is a UUID (ids are made by the service; anything else cannot name a monitor). */
export function isUuid(id: string): boolean {
  return UUID.test(id);
}
