/**
 * Input checks of the EnrollmentService: each failure is INVALID_ARGUMENT with the field named
 * (google.rpc.BadRequest) and the reason from the proto's ErrorReason, before anything is written.
 */
import { invalidArgument } from "@coursemesh/shared/grpc/errors.ts";
import type { PageKey } from "./store.ts";

const MAX_PRIORITY = 100;
const MAX_CAPACITY = 1_000_000;
const MAX_KEY_LENGTH = 128;
const MAX_TITLE_LENGTH = 200;
const MAX_CODE_LENGTH = 64;
const DEFAULT_PAGE_SIZE = 50;
const MAX_PAGE_SIZE = 1000;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// Ids, not names or addresses: events carry student ids, and an email there would be personal data.
const STUDENT_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const COURSE_CODE = /^[A-Za-z0-9][A-Za-z0-9 ._/&()+-]*$/;
const CONTROL = /[\u0000-\u001f\u007f]/;
// A timestamptz as Postgres prints it (page tokens keep its microseconds).
const PG_TIMESTAMP = /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,6})?[+-]\d{2}(:\d{2})?$/;

function fail(reason: string, field: string, description: string): never {
  throw invalidArgument(reason, `${field}: ${description}`, { fieldViolations: [{ field, description }] });
}

/** A required UUID (course_id, request_id, id). */
export function requireId(value: string, field: string): string {
  if (!UUID.test(value)) fail("INVALID_ID", field, value === "" ? "is required" : `must be a UUID, got "${value.slice(0, 64)}"`);
  return value.toLowerCase();
}

/** An idempotency key: 1-128 characters, no control characters. */
export function requireIdempotencyKey(value: string, field = "idempotency_key"): string {
  // Counted in code points; a string of at most MAX_KEY_LENGTH UTF-16 units has no more than that, so only longer ones need the count.
  const length = value.length <= MAX_KEY_LENGTH ? value.length : [...value].length;
  if (length === 0) fail("INVALID_IDEMPOTENCY_KEY", field, "is required (1-128 characters, unique per request)");
  if (length > MAX_KEY_LENGTH) fail("INVALID_IDEMPOTENCY_KEY", field, `must be at most ${MAX_KEY_LENGTH} characters, got ${length}`);
  if (CONTROL.test(value)) fail("INVALID_IDEMPOTENCY_KEY", field, "must not contain control characters");
  return value;
}

/** A student id: letters, digits and . _ : - (1-128), starting with a letter or digit. */
export function requireStudentId(value: string, field = "student_id"): string {
  if (value === "") fail("INVALID_STUDENT_ID", field, "is required");
  if (!STUDENT_ID.test(value)) {
    fail("INVALID_STUDENT_ID", field, "must be 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit (an id, not a name or an email address)");
  }
  return value;
}

/** A priority in 0..100. */
export function requirePriority(value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > MAX_PRIORITY) fail("INVALID_PRIORITY", "priority", `must be between 0 and ${MAX_PRIORITY}, got ${value}`);
  return value;
}

/** A course code such as "CMPUT 201 LEC A1". */
export function requireCourseCode(value: string): string {
  if (value.trim() === "") fail("INVALID_COURSE_CODE", "code", "is required, e.g. \"CMPUT 201 LEC A1\"");
  if (value.length > MAX_CODE_LENGTH) fail("INVALID_COURSE_CODE", "code", `must be at most ${MAX_CODE_LENGTH} characters`);
  if (value !== value.trim() || / {2}/.test(value) || !COURSE_CODE.test(value)) {
    fail("INVALID_COURSE_CODE", "code", "must be letters, digits, single spaces and . _ / & ( ) + -, e.g. \"CMPUT 201 LEC A1\"");
  }
  return value;
}

/** A course title: 1-200 characters of text. */
export function requireTitle(value: string): string {
  if (value.trim() === "") fail("INVALID_TITLE", "title", "is required");
  if ([...value].length > MAX_TITLE_LENGTH) fail("INVALID_TITLE", "title", `must be at most ${MAX_TITLE_LENGTH} characters`);
  if (CONTROL.test(value)) fail("INVALID_TITLE", "title", "must not contain control characters");
  return value.trim();
}

/** A capacity: required on create, 0 or more. */
export function requireCapacity(value: number | undefined): number {
  if (value === undefined) fail("INVALID_CAPACITY", "capacity", "is required (0 or more seats)");
  if (!Number.isInteger(value) || value < 0 || value > MAX_CAPACITY) fail("INVALID_CAPACITY", "capacity", `must be between 0 and ${MAX_CAPACITY}, got ${value}`);
  return value;
}

/** page_size: 0 means the default, values above the maximum are treated as the maximum. */
export function pageSize(value: number): number {
  if (value < 0) fail("INVALID_PAGE_SIZE", "page_size", `must not be negative, got ${value}`);
  return value === 0 ? DEFAULT_PAGE_SIZE : Math.min(value, MAX_PAGE_SIZE);
}

interface TokenBody<T> {
  /** Which query the token continues; a token of another query is refused. */
  q: string;
  k: T;
}

/** An opaque page token continuing `query` after `key`. */
export function pageToken<T>(query: string, key: T): string {
  return Buffer.from(JSON.stringify({ q: query, k: key } satisfies TokenBody<T>)).toString("base64url");
}

function readToken(token: string, query: string): unknown {
  if (token === "") return null;
  let body: Partial<TokenBody<unknown>>;
  try {
    body = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    return fail("INVALID_PAGE_TOKEN", "page_token", "is not a token this service issued; pass next_page_token unchanged");
  }
  if (body?.q !== query || body.k === undefined) fail("INVALID_PAGE_TOKEN", "page_token", "belongs to another query; start again without a token");
  return body.k;
}

/** The code after which a ListCourses page starts (null for the first page). */
export function courseCodeAfter(token: string): string | null {
  const key = readToken(token, "courses");
  if (key !== null && typeof key !== "string") fail("INVALID_PAGE_TOKEN", "page_token", "is malformed");
  return key as string | null;
}

/** The row after which a ListEnrollments/ListWaitlist page starts (null for the first page). */
export function pageKeyAfter(token: string, query: string): PageKey | null {
  const key = readToken(token, query) as PageKey | null;
  if (key !== null && (typeof key?.at !== "string" || typeof key.id !== "string" || !UUID.test(key.id) || !PG_TIMESTAMP.test(key.at))) {
    fail("INVALID_PAGE_TOKEN", "page_token", "is malformed");
  }
  return key;
}
