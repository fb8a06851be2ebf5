import { Metadata, status as GrpcStatus, type ServiceError as GrpcServiceError } from "@grpc/grpc-js";
import { BadRequest, ErrorInfo, RetryInfo } from "@coursemesh/proto/google/rpc/error_details";
import { Status } from "@coursemesh/proto/google/rpc/status";

export { GrpcStatus };

/** The ErrorInfo domain of every coursemesh error. */
export const ERROR_DOMAIN = "coursemesh.dev";
const STATUS_DETAILS_KEY = "grpc-status-details-bin";
const TYPE_PREFIX = "type.googleapis.com/";

export interface FieldViolation {
  field: string;
  description: string;
}

/**
 * An error a caller can act on: a gRPC status code, a machine-readable reason (google.rpc.ErrorInfo)
 * and a message for people. Domain code throws these; the server maps them to the wire.
 */
export class ServiceError extends Error {
  override name = "ServiceError";
  constructor(
    readonly grpcCode: GrpcStatus,
    readonly reason: string,
    message: string,
    readonly details: {
      metadata?: Record<string, string>;
      retryDelayMs?: number;
      fieldViolations?: FieldViolation[];
    } = {},
  ) {
    super(message);
  }
}

type Details = ServiceError["details"];
const make =
  (code: GrpcStatus) =>
  (reason: string, message: string, details?: Details): ServiceError =>
    new ServiceError(code, reason, message, details);

export const invalidArgument = make(GrpcStatus.INVALID_ARGUMENT);
export const notFound = make(GrpcStatus.NOT_FOUND);
export const alreadyExists = make(GrpcStatus.ALREADY_EXISTS);
export const failedPrecondition = make(GrpcStatus.FAILED_PRECONDITION);
export const resourceExhausted = make(GrpcStatus.RESOURCE_EXHAUSTED);
export const unavailable = make(GrpcStatus.UNAVAILABLE);
export const unauthenticated = make(GrpcStatus.UNAUTHENTICATED);
export const permissionDenied = make(GrpcStatus.PERMISSION_DENIED);
export const aborted = make(GrpcStatus.ABORTED);
export const deadlineExceeded = make(GrpcStatus.DEADLINE_EXCEEDED);

const HTTP_STATUS_OF_CODE: Partial<Record<GrpcStatus, number>> = {
  [GrpcStatus.INVALID_ARGUMENT]: 400,
  [GrpcStatus.OUT_OF_RANGE]: 400,
  [GrpcStatus.UNAUTHENTICATED]: 401,
  [GrpcStatus.PERMISSION_DENIED]: 403,
  [GrpcStatus.NOT_FOUND]: 404,
  [GrpcStatus.ALREADY_EXISTS]: 409,
  [GrpcStatus.FAILED_PRECONDITION]: 409,
  [GrpcStatus.ABORTED]: 409,
  [GrpcStatus.RESOURCE_EXHAUSTED]: 429,
  [GrpcStatus.UNAVAILABLE]: 503,
  [GrpcStatus.DEADLINE_EXCEEDED]: 504,
};
const HTTP_STATUS_OF_REASON: Record<string, number> = { FILE_TOO_LARGE: 413, NOT_A_PDF: 415 };

/**
 * The HTTP status of a failed call, for the HTTP front ends (ingest's upload API, the web
 * dashboard): by ErrorInfo reason where one is more precise (413 too large, 415 not a PDF), else
 * by gRPC code; 500 for anything else.
 */
export function httpStatusOf(code: GrpcStatus, reason?: string): number {
  return (reason !== undefined && HTTP_STATUS_OF_REASON[reason]) || HTTP_STATUS_OF_CODE[code] || 500;
}

/** Postgres SQLSTATEs that mean "try again": serialization failure, deadlock, connection trouble. */
const RETRYABLE_SQLSTATE = new Set(["40001", "40P01", "57P01", "57P03", "08000", "08003", "08006", "53300"]);

/**
 * Maps anything thrown by a handler to a ServiceError: our own pass through; transient database
 * and network failures become UNAVAILABLE/ABORTED; the rest is INTERNAL without leaking internals.
 */
export function toServiceError(error: unknown): ServiceError {
  if (error instanceof ServiceError) return error;
  const code = (error as { code?: unknown })?.code;
  if (typeof code === "string" && (code === "40001" || code === "40P01")) {
    return aborted("TRANSACTION_CONFLICT", "the request conflicted with another; retry it");
  }
  if (typeof code === "string" && (RETRYABLE_SQLSTATE.has(code) || code === "CONNECTION_CLOSED" || code === "CONNECTION_ENDED" || code === "CONNECT_TIMEOUT" || code === "ECONNREFUSED")) {
    return unavailable("DEPENDENCY_UNAVAILABLE", "a backing service is unavailable; retry shortly", { retryDelayMs: 1000 });
  }
  if (code === "57014") return deadlineExceeded("QUERY_CANCELLED", "the request took too long and was cancelled");
  return new ServiceError(GrpcStatus.INTERNAL, "INTERNAL", "internal error");
}

function anyOf(typeName: string, value: Uint8Array) {
  return { typeUrl: TYPE_PREFIX + typeName, value: Buffer.from(value) };
}

/** Encodes a ServiceError as a grpc-js error with google.rpc.Status details (ErrorInfo, RetryInfo, BadRequest). */
export function toGrpcError(error: ServiceError): Partial<GrpcServiceError> {
  const details = [
    anyOf("google.rpc.ErrorInfo", ErrorInfo.encode({ reason: error.reason, domain: ERROR_DOMAIN, metadata: error.details.metadata ?? {} }).finish()),
  ];
  if (error.details.retryDelayMs !== undefined) {
    const ms = error.details.retryDelayMs;
    details.push(
      anyOf("google.rpc.RetryInfo", RetryInfo.encode({ retryDelay: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 } }).finish()),
    );
  }
  if (error.details.fieldViolations?.length) {
    details.push(
      anyOf(
        "google.rpc.BadRequest",
        BadRequest.encode({
          fieldViolations: error.details.fieldViolations.map((v) => ({ field: v.field, description: v.description, reason: "", localizedMessage: undefined })),
        }).finish(),
      ),
    );
  }
  const metadata = new Metadata();
  metadata.set(STATUS_DETAILS_KEY, Buffer.from(Status.encode({ code: error.grpcCode, message: error.message, details }).finish()));
  if (error.details.retryDelayMs !== undefined) metadata.set("retry-after-ms", String(error.details.retryDelayMs));
  return { code: error.grpcCode, details: error.message, metadata };
}

/** What a client can read back from a failed call: code, message, ErrorInfo reason and retry delay. */
export interface DecodedError {
  code: GrpcStatus;
  message: string;
  reason?: string;
  domain?: string;
  metadata: Record<string, string>;
  retryDelayMs?: number;
  fieldViolations: FieldViolation[];
}

/** Decodes the google.rpc.Status details of a failed call (for clients and tests). */
export function decodeGrpcError(error: unknown): DecodedError {
  const err = error as Partial<GrpcServiceError>;
  const decoded: DecodedError = { code: err.code ?? GrpcStatus.UNKNOWN, message: err.details ?? String(error), metadata: {}, fieldViolations: [] };
  const raw = err.metadata?.get(STATUS_DETAILS_KEY)[0];
  if (!raw || typeof raw === "string") return decoded;
  const status = Status.decode(raw);
  for (const any of status.details) {
    const type = any.typeUrl.slice(any.typeUrl.lastIndexOf("/") + 1);
    if (type === "google.rpc.ErrorInfo") {
      const info = ErrorInfo.decode(any.value);
      decoded.reason = info.reason;
      decoded.domain = info.domain;
      decoded.metadata = info.metadata;
    } else if (type === "google.rpc.RetryInfo") {
      const delay = RetryInfo.decode(any.value).retryDelay;
      if (delay) decoded.retryDelayMs = delay.seconds * 1000 + Math.round(delay.nanos / 1e6);
    } else if (type === "google.rpc.BadRequest") {
      decoded.fieldViolations = BadRequest.decode(any.value).fieldViolations.map((v) => ({ field: v.field, description: v.description }));
    }
  }
  return decoded;
}
