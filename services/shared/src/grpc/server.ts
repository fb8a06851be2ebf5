import { EventEmitter, once } from "node:events";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { loadFileDescriptorSetFromBuffer, loadSync, type PackageDefinition } from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { HealthImplementation, protoPath as healthProtoPath, type ServingStatus } from "grpc-health-check";
import { authorize, type AccessRule, type Authenticator, type Principal } from "../auth.ts";
import type { Logger } from "../logger.ts";
import { grpcServerHandledSeries, grpcServerHandlingSeconds } from "../metrics.ts";
import { extractTraceContext, recordError, SpanKind, SpanStatusCode, withSpan, type Span } from "../telemetry.ts";
import { toGrpcError, toServiceError } from "./errors.ts";

/** What a handler knows about its call besides the request. */
export interface CallContext {
  /** Full method path, e.g. `/coursemesh.allocator.v1.EnrollmentService/Enroll`. */
  method: string;
  principal: Principal | null;
  metadata: grpc.Metadata;
  /** Aborted when the client cancels, the deadline passes or the server shuts down. */
  signal: AbortSignal;
  deadline: Date | undefined;
  span: Span;
}

type UnaryHandler<Q, R> = (request: Q, ctx: CallContext) => Promise<R>;
type ServerStreamHandler<Q, R> = (request: Q, ctx: CallContext) => AsyncIterable<R>;
type ClientStreamHandler<Q, R> = (requests: AsyncIterable<Q>, ctx: CallContext) => Promise<R>;
type BidiHandler<Q, R> = (requests: AsyncIterable<Q>, ctx: CallContext) => AsyncIterable<R>;

type HandlerFor<H> = H extends (call: infer C, ...rest: never[]) => void
  ? C extends grpc.ServerDuplexStream<infer Q, infer R>
    ? BidiHandler<Q, R>
    : C extends grpc.ServerReadableStream<infer Q, infer R>
      ? ClientStreamHandler<Q, R>
      : C extends grpc.ServerWritableStream<infer Q, infer R>
        ? ServerStreamHandler<Q, R>
        : C extends grpc.ServerUnaryCall<infer Q, infer R>
          ? UnaryHandler<Q, R>
          : never
  : never;

/** Async handlers for a ts-proto `…Server` interface: unary → Promise, streams → async iterables. */
export type Handlers<S> = { [K in keyof S as string extends K ? never : K]: HandlerFor<S[K]> };
/** The access rule of every RPC of a service; a missing entry fails at start-up. */
export type Policy<S> = { [K in keyof Handlers<S>]: AccessRule };

export interface ServiceRegistration {
  definition: grpc.ServiceDefinition;
  handlers: Record<string, Function>;
  policy: Record<string, AccessRule>;
}

/** Pairs a generated service definition with its handlers and per-RPC access policy. */
export function defineService<S>(definition: object, handlers: Handlers<S>, policy: Policy<S>): ServiceRegistration {
  return {
    definition: definition as grpc.ServiceDefinition,
    handlers: handlers as unknown as Record<string, Function>,
    policy: policy as Record<string, AccessRule>,
  };
}

type CallKind = "unary" | "server_stream" | "client_stream" | "bidi_stream";
function kindOf(method: grpc.MethodDefinition<unknown, unknown>): CallKind {
  if (method.requestStream) return method.responseStream ? "bidi_stream" : "client_stream";
  return method.responseStream ? "server_stream" : "unary";
}

const TRACE_KEYS = ["traceparent", "tracestate", "baggage"] as const;

/** The W3C trace headers of a call; undefined when it has none (the root context, without running the propagators). */
function metadataCarrier(metadata: grpc.Metadata): Record<string, string> | undefined {
  let carrier: Record<string, string> | undefined;
  for (const key of TRACE_KEYS) {
    const value = metadata.get(key)[0];
    if (typeof value === "string") (carrier ??= {})[key] = value;
  }
  return carrier;
}

function authorizationOf(metadata: grpc.Metadata): string | undefined {
  const value = metadata.get("authorization")[0];
  return typeof value === "string" ? value : undefined;
}

/** What every kind of server call has in common (grpc-js does not export its name for it). */
interface SurfaceCall extends EventEmitter {
  readonly metadata: grpc.Metadata;
  readonly cancelled: boolean;
  getDeadline(): grpc.Deadline;
}

/**
 * A call's AbortSignal, made only when the handler first reads it: most unary handlers never do,
 * and an AbortController plus a "cancelled" listener on every call is measurable per-call CPU.
 * A signal made after the client cancelled or the server began aborting starts aborted.
 */
class CallAbort {
  private controller: AbortController | undefined;
  private reason: Error | undefined;
  private readonly onCancel = () => this.abort(new Error("cancelled by the client"));

  constructor(private readonly call: SurfaceCall) {}

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (!this.reason && this.call.cancelled) this.reason = new Error("cancelled by the client");
      if (this.reason) this.controller.abort(this.reason);
      else this.call.on("cancelled", this.onCancel);
    }
    return this.controller.signal;
  }

  abort(reason: Error): void {
    this.reason ??= reason;
    this.controller?.abort(this.reason);
  }

  /** The call is over: stop listening for its cancellation. */
  done(): void {
    if (this.controller) this.call.removeListener("cancelled", this.onCancel);
  }
}
interface WritableCall<R> extends EventEmitter {
  write(message: R): boolean;
}

async function writeAll<R>(call: WritableCall<R>, responses: AsyncIterable<R>, signal: AbortSignal) {
  for await (const response of responses) {
    if (signal.aborted) break;
    if (!call.write(response)) await Promise.race([once(call, "drain"), once(signal, "abort")]);
  }
}

export interface GrpcServerOptions {
  /** Service name for spans and logs, e.g. `allocator`. */
  service: string;
  host: string;
  port: number;
  services: ServiceRegistration[];
  authenticator: Authenticator;
  logger: Logger;
  /** Descriptors of services outside the coursemesh image (test fixtures). */
  reflectionDescriptors?: PackageDefinition;
}

export interface RunningGrpcServer {
  port: number;
  server: grpc.Server;
  /** Sets the health of every registered service and of the server as a whole (""). */
  setServing(status: ServingStatus): void;
  /** Stops taking calls, waits for in-flight calls up to `graceMs`, then cancels the rest. */
  shutdown(graceMs: number): Promise<void>;
}

export const SERVER_OPTIONS: grpc.ServerOptions = {
  "grpc.max_receive_message_length": 8 * 1024 * 1024,
  "grpc.max_send_message_length": 16 * 1024 * 1024,
  "grpc.keepalive_time_ms": 60_000,
  "grpc.keepalive_timeout_ms": 20_000,
  "grpc.keepalive_permit_without_calls": 1,
  "grpc.http2.min_ping_interval_without_data_ms": 10_000,
  // Reconnects spread clients over new replicas after a scale-up.
  "grpc.max_connection_age_ms": 5 * 60_000,
  "grpc.max_connection_age_grace_ms": 30_000,
};

let reflectionDefinition: PackageDefinition | undefined;
function reflectionPackage(): PackageDefinition {
  if (!reflectionDefinition) {
    const bytes = readFileSync(fileURLToPath(new URL("../../../../proto/gen/coursemesh.binpb", import.meta.url)));
    reflectionDefinition = { ...loadFileDescriptorSetFromBuffer(bytes), ...loadSync(healthProtoPath) };
  }
  return reflectionDefinition;
}

/** Starts a gRPC server with tracing, auth, error mapping and metrics around every handler, plus Health and reflection. */
export async function startGrpcServer(options: GrpcServerOptions): Promise<RunningGrpcServer> {
  const server = new grpc.Server(SERVER_OPTIONS);
  const inFlight = new Set<CallAbort>();
  const serviceNames: string[] = [];

  for (const registration of options.services) {
    const implementation: grpc.UntypedServiceImplementation = {};
    for (const [key, method] of Object.entries(registration.definition)) {
      const handler = registration.handlers[key];
      const rule = registration.policy[key];
      if (!handler) throw new Error(`no handler for ${method.path}`);
      if (!rule) throw new Error(`no access rule for ${method.path}`);
      implementation[key] = wrapHandler(options, method, handler, rule, inFlight);
    }
    server.addService(registration.definition, implementation);
    const first = Object.values(registration.definition)[0];
    if (first) serviceNames.push(first.path.split("/")[1]!);
  }

  const health = new HealthImplementation({ "": "NOT_SERVING", ...Object.fromEntries(serviceNames.map((s) => [s, "NOT_SERVING" as const])) });
  health.addToServer(server);
  // Reflection describes what this server serves (and Health), so `grpcurl list` shows exactly that.
  new ReflectionService(
    { ...reflectionPackage(), ...options.reflectionDescriptors },
    { services: [...serviceNames, "grpc.health.v1.Health"] },
  ).addToServer(server);

  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${options.host.includes(":") ? `[${options.host}]` : options.host}:${options.port}`, grpc.ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolve(bound),
    ),
  );

  return {
    port,
    server,
    setServing(status) {
      for (const name of ["", ...serviceNames]) health.setStatus(name, status);
    },
    async shutdown(graceMs) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          for (const call of inFlight) call.abort(new Error("server shutting down"));
          server.forceShutdown();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
  };
}

function wrapHandler(
  options: GrpcServerOptions,
  method: grpc.MethodDefinition<unknown, unknown>,
  handler: Function,
  rule: AccessRule,
  inFlight: Set<CallAbort>,
): grpc.UntypedHandleCall {
  const [, serviceName = "", methodName = ""] = method.path.split("/");
  const kind = kindOf(method);
  const spanName = `${options.service}.${methodName}`;
  // The span's attributes at start are the same on every call of the method (the SDK copies them).
  const spanAttributes = { "rpc.system": "grpc", "rpc.service": serviceName, "rpc.method": methodName };
  const labels = { grpc_service: serviceName, grpc_method: methodName, grpc_type: kind };
  // The labelled series of this method, looked up once rather than hashed from labels on every call.
  const handlingSeconds = grpcServerHandlingSeconds.labels(labels);
  const handledByCode = new Map<grpc.status, { inc(): void }>();
  const handled = (code: grpc.status) => {
    let counter = handledByCode.get(code);
    if (!counter) handledByCode.set(code, (counter = grpcServerHandledSeries({ ...labels, grpc_code: grpc.status[code] ?? String(code) })));
    return counter;
  };

  // Runs the handler with a server span, auth and timing; returns the result or throws a ServiceError.
  async function run(call: SurfaceCall, invoke: (ctx: CallContext) => Promise<unknown>): Promise<unknown> {
    // performance.now() rather than startTimer(): no hrtime pair and label-object copy per call.
    const started = performance.now();
    const abort = new CallAbort(call);
    inFlight.add(abort);
    let code = grpc.status.OK;
    try {
      return await withSpan(
        spanName,
        {
          kind: SpanKind.SERVER,
          parent: extractTraceContext(metadataCarrier(call.metadata)),
          attributes: spanAttributes,
        },
        async (span) => {
          try {
            const principal = await options.authenticator.authenticate(authorizationOf(call.metadata));
            authorize(rule, principal, methodName);
            const deadline = call.getDeadline();
            const ctx: CallContext = {
              method: method.path,
              principal,
              metadata: call.metadata,
              get signal() {
                return abort.signal;
              },
              deadline: deadline instanceof Date ? deadline : Number.isFinite(deadline) ? new Date(deadline) : undefined,
              span,
            };
            if (principal) span.setAttribute("enduser.id", principal.subject);
            const result = await invoke(ctx);
            span.setAttribute("rpc.grpc.status_code", grpc.status.OK);
            return result;
          } catch (error) {
            const mapped = toServiceError(error);
            code = mapped.grpcCode;
            span.setAttribute("rpc.grpc.status_code", code);
            if (mapped.reason === "INTERNAL") {
              recordError(span, error);
              options.logger.error({ err: error, method: method.path }, "handler failed");
            } else {
              span.setStatus({ code: SpanStatusCode.ERROR, message: mapped.message });
              span.setAttribute("error.type", mapped.reason);
            }
            throw mapped;
          }
        },
      );
    } finally {
      abort.done();
      inFlight.delete(abort);
      handlingSeconds.observe((performance.now() - started) / 1000);
      handled(code).inc();
    }
  }

  switch (kind) {
    case "unary":
      return (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        run(call, (ctx) => handler(call.request, ctx)).then(
          (response) => callback(null, response),
          (error) => callback(toGrpcError(toServiceError(error))),
        );
      };
    case "client_stream":
      return (call: grpc.ServerReadableStream<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        run(call, (ctx) => handler(call, ctx)).then(
          (response) => callback(null, response),
          (error) => callback(toGrpcError(toServiceError(error))),
        );
      };
    case "server_stream":
      return (call: grpc.ServerWritableStream<unknown, unknown>) => {
        run(call, (ctx) => writeAll(call, handler(call.request, ctx), ctx.signal)).then(
          () => call.end(),
          (error) => call.emit("error", toGrpcError(toServiceError(error))),
        );
      };
    case "bidi_stream":
      return (call: grpc.ServerDuplexStream<unknown, unknown>) => {
        run(call, (ctx) => writeAll(call, handler(call, ctx), ctx.signal)).then(
          () => call.end(),
          (error) => call.emit("error", toGrpcError(toServiceError(error))),
        );
      };
  }
}
