/**
 * The SSRF guard in front of every connection a check makes: an in-process HTTP proxy (plain
 * requests and CONNECT tunnels) that Chromium's contexts and HTTP-mode `fetch` both use. Each
 * connection's host is resolved and checked with the shared guard, and the proxy then connects to
 * exactly the address it checked, so neither a redirect, a subresource nor a DNS answer that
 * changes between check and connect reaches a private address.
 */
import http from "node:http";
import net from "node:net";
import type { Duplex } from "node:stream";
import { Counter } from "prom-client";
import type { Logger } from "@coursemesh/shared/logger.ts";
import { registry } from "@coursemesh/shared/metrics.ts";
import { assertPublicHost, HostNotAllowedError, systemResolver, type Resolver } from "@coursemesh/shared/net/ssrf.ts";

/** Response header on the proxy's own refusals, so a check can tell them from the site's 403. */
export const REFUSED_HEADER = "x-coursemesh-refused";

export interface GuardPolicy {
  /** SCRAPER_ALLOW_PRIVATE_HOSTS: every resolvable host passes. */
  allowPrivate: boolean;
  /** SCRAPER_ALLOWED_HOSTS: `host` or `host:port` entries (lowercase) that pass even when private. */
  allowedHosts: readonly string[];
  resolve?: Resolver;
}

/** Where the proxy may connect for `host:port`, or why it may not. */
export type GuardDecision = { allowed: true; address: string } | { allowed: false; reason: string };

/** Strips the brackets of an IPv6 literal and lowercases a host name. */
function bareHost(host: string): string {
  const lower = host.toLowerCase();
  return lower.startsWith("[") && lower.endsWith("]") ? lower.slice(1, -1) : lower;
}

/** Applies the SSRF policy to one destination; resolves names, and returns the checked address to connect to. */
export async function decideDestination(host: string, port: number, policy: GuardPolicy): Promise<GuardDecision> {
  const bare = bareHost(host);
  const listed = policy.allowedHosts.includes(bare) || policy.allowedHosts.includes(`${bare}:${port}`);
  try {
    const addresses = await assertPublicHost(bare, { allowPrivate: policy.allowPrivate || listed, resolve: policy.resolve ?? systemResolver });
    return { allowed: true, address: addresses[0]! };
  } catch (error) {
    if (error instanceof HostNotAllowedError) return { allowed: false, reason: `${bare}:${port} refused: ${error.message}` };
    throw error;
  }
}

export interface GuardProxy {
  /** `http://127.0.0.1:<port>`, for Chromium's `proxyServer` and fetch's `proxy`. */
  url: string;
  /** The latest refusal for a host:port, so a failed tunnel can be explained to the user. */
  refusalFor(host: string, port: number): string | undefined;
  stop(): Promise<void>;
}

const refusals = new Counter({
  name: "coursemesh_scraper_guard_refusals_total",
  help: "Connections the SSRF guard refused (pages, redirects and subresources).",
  labelNames: ["kind"] as const,
  registers: [registry],
});

// Hop-by-hop headers (RFC 9110 §7.6.1) are for the proxy, not the origin.
const HOP_BY_HOP = new Set(["connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade"]);

/** Starts the guard proxy on 127.0.0.1 (a free port). */
export async function startGuardProxy(policy: GuardPolicy, logger: Logger): Promise<GuardProxy> {
  const recentRefusals = new Map<string, string>();
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const sockets = new Set<Duplex>();

  const refuse = (key: string, reason: string, kind: "request" | "connect") => {
    refusals.inc({ kind });
    // Bounded: only the latest few hundred reasons matter for explaining a failed check.
    if (recentRefusals.size > 500) recentRefusals.delete(recentRefusals.keys().next().value!);
    recentRefusals.set(key, reason);
    logger.debug({ destination: key, reason }, "SSRF guard refused a connection");
  };

  const server = http.createServer(async (req, res) => {
    let target: URL;
    try {
      target = new URL(req.url ?? "");
    } catch {
      res.writeHead(400, { [REFUSED_HEADER]: "not a proxy request" }).end("this is a forward proxy; send absolute-form requests");
      return;
    }
    if (target.protocol !== "http:") {
      res.writeHead(400, { [REFUSED_HEADER]: `only http and https URLs are allowed, not ${target.protocol}` }).end();
      return;
    }
    const port = Number(target.port || 80);
    const decision = await decideDestination(target.hostname, port, policy);
    if (!decision.allowed) {
      refuse(`${bareHost(target.hostname)}:${port}`, decision.reason, "request");
      res.writeHead(403, { [REFUSED_HEADER]: decision.reason, "content-type": "text/plain" }).end(decision.reason);
      return;
    }
    const headers: http.OutgoingHttpHeaders = {};
    for (const [name, value] of Object.entries(req.headers)) if (!HOP_BY_HOP.has(name)) headers[name] = value;
    const upstream = http.request(
      { host: decision.address, port, path: `${target.pathname}${target.search}`, method: req.method, headers, agent, setHost: false },
      (response) => {
        const out: http.OutgoingHttpHeaders = {};
        for (const [name, value] of Object.entries(response.headers)) if (!HOP_BY_HOP.has(name)) out[name] = value;
        res.writeHead(response.statusCode ?? 502, out);
        response.pipe(res);
      },
    );
    upstream.on("error", (error) => {
      if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" }).end(`upstream error: ${error.message}`);
      else res.destroy();
    });
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  });

  server.on("connect", async (req: http.IncomingMessage, client: Duplex, head: Buffer) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    client.on("error", () => client.destroy());
    const match = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(req.url ?? "");
    if (!match) {
      client.end("HTTP/1.1 400 Bad Request\r\n\r\n");
      return;
    }
    const port = Number(match[2]);
    const decision = await decideDestination(match[1]!, port, policy);
    if (!decision.allowed) {
      refuse(`${bareHost(match[1]!)}:${port}`, decision.reason, "connect");
      client.end(`HTTP/1.1 403 Forbidden\r\n${REFUSED_HEADER}: ${decision.reason.replace(/[\r\n]/g, " ")}\r\n\r\n`);
      return;
    }
    const upstream = net.connect(port, decision.address, () => {
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      if (head.length) upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    sockets.add(upstream);
    upstream.on("close", () => sockets.delete(upstream));
    upstream.on("error", () => {
      if (client.writable) client.end("HTTP/1.1 502 Bad Gateway\r\n\r\n");
      client.destroy();
    });
    client.on("close", () => upstream.destroy());
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    refusalFor: (host, targetPort) => recentRefusals.get(`${bareHost(host)}:${targetPort}`),
    async stop() {
      for (const socket of sockets) socket.destroy();
      agent.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
