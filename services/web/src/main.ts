/**
 * The web dashboard: serves pages to browsers and calls the four services over gRPC with the
 * signed-in user's token. No database, no NATS, no gRPC server. Wiring only.
 */
import { required } from "@coursemesh/shared/config.ts";
import { runHttpService } from "@coursemesh/shared/service.ts";
import { createWebApp } from "./app.ts";
import { createBackends } from "./backends.ts";
import { createLiveStreams } from "./live.ts";
import { registerLiveStreamGauge } from "./metrics.ts";
import { webRoutes } from "./routes.ts";

await runHttpService({
  service: "web",
  httpOnly: true,
  async setup({ config, logger, authenticator, shutdown }) {
    const backends = createBackends(config);
    const live = createLiveStreams(logger);
    registerLiveStreamGauge(live.count);
    // SSE streams end at once so browsers reconnect to another replica; then requests in flight finish.
    shutdown.on("stop-intake", "live-streams", () => live.closeAll());
    shutdown.on("flush-telemetry", "grpc-clients", () => backends.close());
    const maxUploadBytes = config.WEB_MAX_UPLOAD_BYTES!;
    const sessionSecret = required(config, "WEB_SESSION_SECRET");
    const cookieSecure = Boolean(config.WEB_COOKIE_SECURE);
    // No readiness check on the backends: a dashboard that says "not reachable right now" on one
    // page is better than no dashboard at all; each backend has its own /readyz.
    return {
      handleHttp: createWebApp({
        authenticator,
        sessionSecret,
        cookieSecure,
        logger,
        routes: webRoutes({ backends, live, logger, maxUploadBytes, sessionSecret, cookieSecure }),
      }),
      // The hard cap of the HTTP server; uploads are refused with a readable 413 well before it (a
      // declared size at once, a chunked body as it streams).
      maxRequestBodySize: 2 * maxUploadBytes + 1024 * 1024,
      // Live streams send a heartbeat every 15 s, inside this.
      idleTimeoutSeconds: 60,
    };
  },
});
