/**
 * A failed backend call, as a person sees it in the dashboard: the HTTP status, the service's own
 * message, and its field violations placed next to the form fields they are about.
 */
import { decodeGrpcError, GrpcStatus, httpStatusOf } from "@coursemesh/shared/grpc/errors.ts";

export interface WebError {
  status: number;
  /** The service's message (never internals: INTERNAL says only that something went wrong). */
  message: string;
  /** Form field name → the service's description of what is wrong with it. */
  fields: Record<string, string>;
  reason?: string;
  retryAfterMs?: number;
}

/**
 * How a form names what the API calls a field: `fieldMap` maps an API field path (or its ErrorInfo
 * reason, for errors without field violations) to the form field; otherwise the path's last
 * segment, without list indexes, is the form field (`notify_emails[2]` → `notify_emails`).
 */
export type FieldMap = Record<string, string>;

function formField(path: string, fieldMap: FieldMap): string {
  const exact = fieldMap[path];
  if (exact) return exact;
  const withoutIndexes = path.replace(/\[\d+\]/g, "");
  return fieldMap[withoutIndexes] ?? withoutIndexes.split(".").at(-1)!;
}

/** Maps a failed gRPC call to the status and messages the dashboard shows. */
export function toWebError(error: unknown, fieldMap: FieldMap = {}): WebError {
  const decoded = decodeGrpcError(error);
  const status = httpStatusOf(decoded.code, decoded.reason);
  const unavailable = decoded.code === GrpcStatus.UNAVAILABLE || decoded.code === GrpcStatus.DEADLINE_EXCEEDED;
  let message = decoded.message;
  if (status === 500 || decoded.code === GrpcStatus.INTERNAL) message = "Something went wrong on our side; try again in a moment.";
  else if (unavailable && (!decoded.reason || /no connection|connect|ECONNREFUSED|Deadline/i.test(message))) {
    // A transport failure says nothing a person can act on.
    message = "That part of coursemesh is not reachable right now; try again in a moment.";
  }
  const fields: Record<string, string> = {};
  for (const violation of decoded.fieldViolations) {
    const name = formField(violation.field, fieldMap);
    fields[name] = fields[name] ? `${fields[name]}; ${violation.description}` : violation.description;
  }
  if (decoded.fieldViolations.length === 0 && decoded.reason && fieldMap[decoded.reason]) fields[fieldMap[decoded.reason]!] = message;
  return { status, message, fields, reason: decoded.reason, retryAfterMs: decoded.retryDelayMs };
}

/** Whether a value is a gRPC error (as opposed to a bug in the dashboard). */
export function isGrpcError(error: unknown): boolean {
  return typeof (error as { code?: unknown })?.code === "number" && "details" in (error as object);
}

/** A refusal the dashboard makes itself, for input the API's typed fields cannot even carry (e.g. "ten" seats). */
export function fieldError(field: string, description: string): WebError {
  return { status: 400, message: `${field}: ${description}`, fields: { [field]: description } };
}
