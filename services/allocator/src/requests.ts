/**
 * Reading enrollment requests: one by id or idempotency key, a student's own list, and watching one
 * change from any replica. Students see only their own requests; to anyone else another student's request does
 * not exist (NOT_FOUND), so ids and keys reveal nothing.
 */
import type { Sql } from "@coursemesh/shared/db.ts";
import { notFound } from "@coursemesh/shared/grpc/errors.ts";
import { follow, type ChangeFeed, type RequestReader } from "./changes.ts";
import { selectRequestsByIds, selectRequestsByKeys, selectStudentRequests, type PageKey, type RequestRecord } from "./store.ts";
import { pageOf, type Page } from "./waitlist.ts";

/** Who is reading: a student sees their own requests, staff (registrar, service, operator) every one. */
export interface Viewer {
  subject: string;
  seesEveryone: boolean;
}

export type RequestLookup = { requestId: string } | { idempotencyKey: string };

function requestNotFound(lookup: RequestLookup) {
  const [field, value] = "requestId" in lookup ? ["request_id", lookup.requestId] : ["idempotency_key", lookup.idempotencyKey];
  return notFound("REQUEST_NOT_FOUND", `no enrollment request with ${field} ${value}`, { metadata: { [field]: value } });
}

/** One request with positions computed now; NOT_FOUND when it does not exist or is not the viewer's. */
export async function getRequest(sql: Sql, lookup: RequestLookup, viewer: Viewer): Promise<RequestRecord> {
  const [record] = "requestId" in lookup ? await selectRequestsByIds(sql, [lookup.requestId]) : await selectRequestsByKeys(sql, [lookup.idempotencyKey]);
  if (!record || (!viewer.seesEveryone && record.studentId !== viewer.subject)) throw requestNotFound(lookup);
  return record;
}

/** A page of one student's requests in every status, newest first, positions computed now. */
export async function listStudentRequests(sql: Sql, studentId: string, after: PageKey | null, limit: number): Promise<Page<RequestRecord>> {
  return pageOf(await selectStudentRequests(sql, studentId, after, limit + 1), limit);
}

/** Whether a watch of the request is over: a seat (ENROLLED), a refusal or a drop. */
export function watchIsOver(record: RequestRecord): boolean {
  return record.status === "ENROLLED" || record.status === "REJECTED" || record.status === "DROPPED";
}

/**
 * The request's state now, then each change (of status, or of place on the waitlist) until the
 * watch is over or `signal` aborts.
 */
export async function* watchRequest(feed: ChangeFeed, reader: RequestReader, current: RequestRecord, signal: AbortSignal): AsyncGenerator<RequestRecord> {
  yield current;
  let last = current;
  if (watchIsOver(last)) return;
  for await (const record of follow(feed, reader, current.courseId, current.id, signal)) {
    if (record.status === last.status && record.waitlistPosition === last.waitlistPosition) continue;
    last = record;
    yield record;
    if (watchIsOver(record)) return;
  }
}
