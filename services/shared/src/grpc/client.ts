import * as grpc from "@grpc/grpc-js";
import { context, propagation, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";

export interface ClientOptions {
  /** Name of the calling service, for client spans (`<service>.<Method>`). */
  caller: string;
  /** Deadline applied to unary calls that set none. */
  defaultDeadlineMs?: number;
  /** RPC names (e.g. `GetCourse`) safe to retry when the server is UNAVAILABLE. */
  idempotentMethods?: readonly string[];
  /** Bearer token for every call (service-to-service); a call's own `authorization` metadata wins. */
  token?: () => string | undefined;
  channelOptions?: grpc.ChannelOptions;
}

type GeneratedClient<C> = (new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ClientOptions) => C) & {
  service: grpc.ServiceDefinition;
};

/** The retry policy for idempotent calls, as a gRPC service config (retries happen inside grpc-js). */
export function retryServiceConfig(serviceName: string, methods: readonly string[]): string {
  return JSON.stringify({
    methodConfig: [
      {
        name: methods.map((method) => ({ service: serviceName, method })),
        retryPolicy: {
          maxAttempts: 4,
          initialBackoff: "0.1s",
          maxBackoff: "2s",
          backoffMultiplier: 2,
          retryableStatusCodes: ["UNAVAILABLE"],
        },
      },
    ],
  });
}

/** A client interceptor that starts a client span, injects W3C context and the bearer token, and sets a default deadline. */
export function clientInterceptor(options: ClientOptions): grpc.Interceptor {
  return (callOptions, nextCall) => {
    const definition = callOptions.method_definition;
    const [, serviceName = "", methodName = ""] = definition.path.split("/");
    const unary = !definition.requestStream && !definition.responseStream;
    const nextOptions =
      unary && callOptions.deadline === undefined && options.defaultDeadlineMs
        ? { ...callOptions, deadline: Date.now() + options.defaultDeadlineMs }
        : callOptions;
    const span = trace.getTracer("coursemesh").startSpan(
      `${options.caller}.${methodName}`,
      { kind: SpanKind.CLIENT, attributes: { "rpc.system": "grpc", "rpc.service": serviceName, "rpc.method": methodName } },
      context.active(),
    );
    const spanContext = trace.setSpan(context.active(), span);
    return new grpc.InterceptingCall(nextCall(nextOptions), {
      start(metadata, listener, next) {
        propagation.inject(spanContext, metadata, { set: (carrier, key, value) => carrier.set(key, value) });
        const token = options.token?.();
        if (token && metadata.get("authorization").length === 0) metadata.set("authorization", `Bearer ${token}`);
        next(metadata, {
          onReceiveStatus(status, nextStatus) {
            span.setAttribute("rpc.grpc.status_code", status.code);
            if (status.code !== grpc.status.OK) span.setStatus({ code: SpanStatusCode.ERROR, message: status.details });
            span.end();
            nextStatus(status);
          },
        });
      },
    });
  };
}

/** Creates a generated (ts-proto) client with tracing, auth, deadlines, retries and message limits. */
export function createClient<C extends grpc.Client>(Client: GeneratedClient<C>, address: string, options: ClientOptions): C {
  const first = Object.values(Client.service)[0];
  const serviceName = first ? first.path.split("/")[1]! : "";
  return new Client(address, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": 16 * 1024 * 1024,
    "grpc.max_send_message_length": 8 * 1024 * 1024,
    "grpc.keepalive_time_ms": 60_000,
    "grpc.keepalive_timeout_ms": 20_000,
    "grpc.enable_retries": 1,
    "grpc.service_config": retryServiceConfig(serviceName, options.idempotentMethods ?? []),
    ...options.channelOptions,
    interceptors: [clientInterceptor(options)],
  });
}

export interface UnaryCallOptions {
  metadata?: grpc.Metadata;
  /** Bearer token for this call (e.g. acting on behalf of the user). */
  token?: string;
  deadlineMs?: number;
}

type UnaryMethod<Q, R> = (
  request: Q,
  metadata: grpc.Metadata,
  options: Partial<grpc.CallOptions>,
  callback: (error: grpc.ServiceError | null, response: R) => void,
) => grpc.ClientUnaryCall;

/** Promise form of a unary call: `await unary(client.getCourse.bind(client), { id })`. */
export function unary<Q, R>(method: UnaryMethod<Q, R>, request: Q, options: UnaryCallOptions = {}): Promise<R> {
  const metadata = options.metadata ?? new grpc.Metadata();
  if (options.token) metadata.set("authorization", `Bearer ${options.token}`);
  const callOptions: Partial<grpc.CallOptions> = options.deadlineMs ? { deadline: Date.now() + options.deadlineMs } : {};
  return new Promise((resolve, reject) => {
    method(request, metadata, callOptions, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

/** Metadata carrying a bearer token. */
export function bearer(token: string): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return metadata;
}
