// The SSRF guard end to end, with the guard ON and only loopback targets: 127.0.0.1 plays the
// internal service a page must not reach; 127.0.0.2 plays an allowed public site (allow-listed with
// SCRAPER_ALLOWED_HOSTS, the one exception). Every refused attempt is checked to have sent nothing.
// The address classes themselves are unit-tested with stub resolvers in services/shared/test/ssrf.test.ts
// and test/rules.test.ts; nothing here goes off this machine.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as grpc from "@grpc/grpc-js";
import { FetchMode, MonitorHealth } from "@coursemesh/proto/coursemesh/scraper/v1/scraper";
import { decodeGrpcError } from "@coursemesh/shared/grpc/errors.ts";
import type { ServiceProcess } from "@coursemesh/shared/testing/harness.ts";
import { testToken } from "@coursemesh/shared/testing/harness.ts";
import { seatText } from "../src/demo/registrar.ts";
import { beartracks, call, monitorClient, scraperEnv, type ScraperEnv } from "./support.ts";

let env: ScraperEnv;
let scraper: ServiceProcess;
let client: ReturnType<typeof monitorClient>;
let token: string;
let site: ReturnType<typeof Bun.serve>;
let siteUrl: string;
/** Requests the "internal" server (127.0.0.1) received: must stay empty. */
const internalHits: string[] = [];
let internal: ReturnType<typeof Bun.serve>;
let internalUrl: string;

const schedule = (seats: string) =>
  `<div class="course_box"><div class="course_title">CMPUT 201 - Practical Programming</div><strong class="type_block">LEC A1</strong><span class="seatText">${seats}</span></div>`;

beforeAll(async () => {
  internal = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(request) {
      internalHits.push(new URL(request.url).pathname);
      return new Response(`<html><body>${schedule("internal secret: 1 of 1 seats open")}<script>document.title='x'</script></body></html>`, { headers: { "content-type": "text/html" } });
    },
  });
  internalUrl = `http://127.0.0.1:${internal.port}`;
  site = Bun.serve({
    hostname: "127.0.0.2",
    port: 0,
    fetch(request) {
      const path = new URL(request.url).pathname;
      const html = (body: string) => new Response(`<!doctype html><html><body>${body}</body></html>`, { headers: { "content-type": "text/html" } });
      if (path === "/ok") return html(schedule(seatText({ open: 4, capacity: 30, waitlist: 0 })));
      if (path === "/redirect") return Response.redirect(`${internalUrl}/admin`, 302);
      // The seats are rendered by a script that lives on the internal host.
      if (path === "/subresource") {
        return html(`<div class="course_box"><div class="course_title">CMPUT 201 - X</div><strong class="type_block">LEC A1</strong></div>
          <img src="${internalUrl}/pixel.png"><link rel="stylesheet" href="${internalUrl}/style.css"><script src="${internalUrl}/render.js"></script>
          <script>fetch("${internalUrl}/api").catch(() => {});</script>`);
      }
      return new Response("not found", { status: 404 });
    },
  });
  siteUrl = `http://127.0.0.2:${site.port}`;
  env = await scraperEnv({ env: { SCRAPER_ALLOW_PRIVATE_HOSTS: "false", SCRAPER_ALLOWED_HOSTS: `127.0.0.2:${site.port}`, SCRAPER_CHECK_TIMEOUT_MS: "3000" } });
  scraper = await env.startScraper();
  client = monitorClient(scraper.grpcAddress);
  token = await testToken("alice", ["student"]);
});

afterAll(async () => {
  client?.close();
  await env?.close();
  site?.stop(true);
  internal?.stop(true);
});

const request = (url: string, fetchMode = FetchMode.FETCH_MODE_BROWSER) => ({ url, label: "CMPUT 201 LEC A1", intervalSeconds: 3600, notifyEmails: [], extractor: beartracks(), fetchMode, isolation: 0 });

describe("at CreateMonitor", () => {
  test("loopback in every spelling is refused with URL_NOT_ALLOWED, and nothing is fetched", async () => {
    const port = internal.port;
    const urls = [
      `${internalUrl}/admin`,
      `http://127.9.8.7:${port}/`,
      `http://localhost:${port}/`,
      `http://[::1]:${port}/`,
      `http://[::ffff:127.0.0.1]:${port}/`,
      `http://[::ffff:7f00:1]:${port}/`,
      `http://2130706433:${port}/`,
      `http://0x7f.1:${port}/`,
      `http://127.1:${port}/`,
      `http://0.0.0.0:${port}/`,
      // Allow-listed is host:port: the same host on another port is not.
      `http://127.0.0.2:${port}/`,
    ];
    for (const url of urls) {
      let error;
      try {
        await call(client, "createMonitor", request(url), token);
      } catch (e) {
        error = decodeGrpcError(e);
      }
      expect([url, error?.code, error?.reason]).toEqual([url, grpc.status.INVALID_ARGUMENT, "URL_NOT_ALLOWED"]);
      expect(error!.message).toMatch(/refused: .* is a (loopback|unspecified|ipv4-mapped) address/);
    }
    expect((await call(client, "listMonitors", { mode: 0, pageSize: 0, pageToken: "" }, token)).monitors).toEqual([]);
    expect(internalHits).toEqual([]);
  });

  test("the allow-listed host works in both fetch modes", async () => {
    for (const mode of [FetchMode.FETCH_MODE_BROWSER, FetchMode.FETCH_MODE_HTTP]) {
      const { monitor } = await call(client, "createMonitor", request(`${siteUrl}/ok`, mode), token);
      const checked = (await call(client, "checkNow", { id: monitor!.id }, token)).monitor!;
      expect([mode, checked.health, checked.seats?.open]).toEqual([mode, MonitorHealth.MONITOR_HEALTH_HEALTHY, 4]);
    }
  });
});

describe("at every fetch", () => {
  test("a redirect from an allowed page to a refused one is blocked in both modes", async () => {
    for (const mode of [FetchMode.FETCH_MODE_BROWSER, FetchMode.FETCH_MODE_HTTP]) {
      const { monitor } = await call(client, "createMonitor", request(`${siteUrl}/redirect`, mode), token);
      const checked = (await call(client, "checkNow", { id: monitor!.id }, token)).monitor!;
      expect(checked.health).toBe(MonitorHealth.MONITOR_HEALTH_PENDING);
      expect(checked.consecutiveFailures).toBeGreaterThanOrEqual(1);
      expect(checked.lastError).toContain(`blocked by the SSRF guard: 127.0.0.1:${internal.port} refused: 127.0.0.1 is a loopback address`);
    }
    expect(internalHits).toEqual([]);
  });

  test("subresources (scripts, images, styles, fetch) to a refused host never leave the browser", async () => {
    const { monitor } = await call(client, "createMonitor", request(`${siteUrl}/subresource`), token);
    const checked = (await call(client, "checkNow", { id: monitor!.id }, token)).monitor!;
    // The seats would come from the internal script; without it there are none.
    expect(checked.lastError).toBe("section 'LEC A1' under course 'CMPUT 201' shows no seat text (.seatText) (waited 3 s)");
    expect(internalHits).toEqual([]);
    const metrics = await (await fetch(`${scraper.httpUrl}/metrics`)).text();
    const refused = [...metrics.matchAll(/^coursemesh_scraper_guard_refusals_total\{[^}]*\} (\d+)/gm)].reduce((sum, m) => sum + Number(m[1]), 0);
    expect(refused).toBeGreaterThanOrEqual(3);
  });
});
