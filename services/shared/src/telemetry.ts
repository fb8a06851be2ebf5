import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Link,
  type Span,
} from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from "@opentelemetry/core";
import { NodeSDK } from "@opentelemetry/sdk-node";

export { SpanKind, SpanStatusCode, type Attributes, type Context, type Link, type Span };

let sdk: NodeSDK | undefined;
let contextInstalled = false;

function installContextAndPropagation(): void {
  if (contextInstalled) return;
  contextInstalled = true;
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(
    new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }),
  );
}

/** Whether the standard OTEL_* variables ask for traces to be exported. */
export function tracingRequested(env: Record<string, string | undefined> = process.env): boolean {
  if ((env.OTEL_SDK_DISABLED ?? "").toLowerCase() === "true") return false;
  if ((env.OTEL_TRACES_EXPORTER ?? "").split(",").includes("none")) return false;
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
}

/**
 * Sets up OpenTelemetry once per process from the standard OTEL_* variables (OTLP over
 * http/protobuf or http/json, the sampler, resource attributes). Without an OTLP endpoint, tracing
 * stays off but W3C context still passes through, so a process in the middle never breaks a trace.
 */
export function startTelemetry(serviceName: string): { enabled: boolean } {
  if (sdk) return { enabled: true };
  if (!tracingRequested()) {
    installContextAndPropagation();
    return { enabled: false };
  }
  // Metrics go to Prometheus via /metrics and logs to stdout; the SDK exports traces only.
  process.env.OTEL_METRICS_EXPORTER ??= "none";
  process.env.OTEL_LOGS_EXPORTER ??= "none";
  // Parent-based ratio sampling, every trace unless OTEL_TRACES_SAMPLER_ARG says otherwise: the
  // service that starts a trace decides, the rest follow, and production turns the ratio down
  // without naming the sampler (k8s prod sets 0.1).
  if (process.env.OTEL_TRACES_SAMPLER === undefined) {
    process.env.OTEL_TRACES_SAMPLER = "parentbased_traceidratio";
    process.env.OTEL_TRACES_SAMPLER_ARG ??= "1.0";
  }
  sdk = new NodeSDK({
    serviceName: process.env.OTEL_SERVICE_NAME ?? serviceName,
    instrumentations: [],
  });
  // The SDK registers the AsyncLocalStorage context manager and W3C propagators itself.
  sdk.start();
  contextInstalled = true;
  return { enabled: true };
}

/** Flushes and stops the exporter; the last step of a graceful shutdown. */
export async function shutdownTelemetry(): Promise<void> {
  const running = sdk;
  sdk = undefined;
  await running?.shutdown();
}

export interface SpanOptions {
  kind?: SpanKind;
  attributes?: Attributes;
  links?: Link[];
  /** Parent context; defaults to the active one. */
  parent?: Context;
  /** Start a new trace even when a span is active. */
  root?: boolean;
}

/**
 * Runs `fn` inside a new active span named `name` (`<service>.<operation>`), records an exception
 * and ERROR status when it throws, and always ends the span.
 */
export async function withSpan<T>(name: string, options: SpanOptions, fn: (span: Span) => Promise<T> | T): Promise<T> {
  const tracer = trace.getTracer("coursemesh");
  const parent = options.parent ?? context.active();
  return tracer.startActiveSpan(
    name,
    { kind: options.kind ?? SpanKind.INTERNAL, attributes: options.attributes, links: options.links, root: options.root },
    parent,
    async (span) => {
      try {
        return await fn(span);
      } catch (error) {
        recordError(span, error);
        throw error;
      } finally {
        span.end();
      }
    },
  );
}

/** Marks `span` failed with `error`. */
export function recordError(span: Span, error: unknown): void {
  const err = error instanceof Error ? error : new Error(String(error));
  span.recordException(err);
  span.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
}

/** Writes the W3C `traceparent`/`tracestate` of `ctx` into a string map (metadata, headers, rows). */
export function injectTraceContext(carrier: Record<string, string> = {}, ctx: Context = context.active()): Record<string, string> {
  propagation.inject(ctx, carrier);
  return carrier;
}

/** Reads W3C trace context from a carrier; the root context when there is none. */
export function extractTraceContext(carrier: Record<string, string | undefined> | undefined): Context {
  if (!carrier) return ROOT_CONTEXT;
  return propagation.extract(ROOT_CONTEXT, carrier, {
    get: (c, key) => c[key] ?? c[key.toLowerCase()],
    keys: (c) => Object.keys(c),
  });
}

/** A span link to the trace that `traceparent` names, for batch work that serves many requests. */
export function linkFromTraceparent(traceparent: string | null | undefined, attributes?: Attributes): Link | undefined {
  if (!traceparent) return undefined;
  const spanContext = trace.getSpanContext(extractTraceContext({ traceparent }));
  return spanContext ? { context: spanContext, attributes } : undefined;
}

/** The `traceparent` of the active span, to store with a row that starts work later. */
export function currentTraceparent(): string | undefined {
  return injectTraceContext({}).traceparent;
}
