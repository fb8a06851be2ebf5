import type { Server } from "bun";
import { registry } from "./metrics.ts";

/** A named dependency check for /readyz (Postgres reachable, NATS connected…). */
export type ReadinessCheck = { name: string; check: () => Promise<void> | void };

export interface OpsServerOptions {
  host: string;
  port: number;
  checks: ReadinessCheck[];
  /** Extra routes a service serves on its HTTP port (e.g. uploads); return undefined to fall through. */
  handle?: (request: Request) => Promise<Response | undefined> | Response | undefined;
  /** Largest request body accepted on this port. */
  maxRequestBodySize?: number;
  /** Seconds an idle connection stays open (Bun's default is 10). */
  idleTimeoutSeconds?: number;
}

export interface OpsServer {
  port: number;
  url: string;
  /** Readiness turns false as shutdown starts, so load balancers stop sending work first. */
  setReady(ready: boolean): void;
  /** Stops listening; `graceful` lets requests in flight finish, otherwise open connections are closed. */
  stop(options?: { graceful?: boolean }): Promise<void>;
}

const CHECK_TIMEOUT_MS = 2000;

async function runCheck({ name, check }: ReadinessCheck): Promise<{ name: string; ok: boolean; error?: string }> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      Promise.resolve().then(check),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${CHECK_TIMEOUT_MS} ms`)), CHECK_TIMEOUT_MS);
      }),
    ]);
    return { name, ok: true };
  } catch (error) {
    return { name, ok: false, error: error instanceof Error ? error.message : String(error) };
  } finally {
    clearTimeout(timer);
  }
}

/** Serves /healthz (the process is alive), /readyz (dependencies reachable) and /metrics (Prometheus). */
export function startOpsServer(options: OpsServerOptions): OpsServer {
  let ready = true;
  const server: Server<undefined> = Bun.serve({
    hostname: options.host,
    port: options.port,
    maxRequestBodySize: options.maxRequestBodySize,
    idleTimeout: options.idleTimeoutSeconds,
    async fetch(request) {
      const { pathname } = new URL(request.url);
      if (request.method === "GET" && pathname === "/healthz") return Response.json({ status: "ok" });
      if (request.method === "GET" && pathname === "/readyz") {
        const results = await Promise.all(options.checks.map(runCheck));
        const ok = ready && results.every((r) => r.ok);
        return Response.json({ status: ok ? "ready" : "not ready", shutting_down: !ready, checks: results }, { status: ok ? 200 : 503 });
      }
      if (request.method === "GET" && pathname === "/metrics") {
        return new Response(await registry.metrics(), { headers: { "content-type": registry.contentType } });
      }
      const handled = await options.handle?.(request);
      return handled ?? Response.json({ error: "not found" }, { status: 404 });
    },
    error(error) {
      return Response.json({ error: "internal error", detail: error.message }, { status: 500 });
    },
  });
  return {
    port: server.port ?? options.port,
    url: `http://${options.host === "0.0.0.0" ? "127.0.0.1" : options.host}:${server.port}`,
    setReady(value) {
      ready = value;
    },
    async stop(stopOptions = {}) {
      await server.stop(!stopOptions.graceful);
    },
  };
}
