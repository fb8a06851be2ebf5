// Toolchain go/no-go: puppeteer-core under the pinned Bun drives the system Chromium.
//
// - Chromium comes from SCRAPER_CHROMIUM_PATH, else /usr/bin/chromium; puppeteer-core
//   never downloads a browser.
// - The only page is served by a local Bun.serve on 127.0.0.1; Chromium is launched
//   with flags that stop its own background calls out, plus a host-resolver rule so
//   that every host except 127.0.0.1 fails to resolve.
// - A fresh temporary --user-data-dir is used and removed afterwards, and the test
//   checks that no Chromium process of this run is left behind.
// - Quirk (Debian's Chromium): /usr/bin/chromium is a shell wrapper that sources
//   /etc/chromium.d/* and adds its own flags (--enable-remote-extensions and
//   --load-extension=, neutralised by our later --disable-extensions). The browser
//   starts chrome_crashpad_handler with its crash database under
//   $XDG_CONFIG_HOME/chromium (default ~/.config/chromium) whatever --user-data-dir
//   says, and writes ~/.cache/dconf. XDG_CONFIG_HOME/XDG_CACHE_HOME are pointed into
//   the temporary directory so nothing is left outside it.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import puppeteer, { type Browser } from "puppeteer-core";

const CHROMIUM_PATH = process.env.SCRAPER_CHROMIUM_PATH || "/usr/bin/chromium";
const RENDER_DELAY_MS = 200;

const CHROMIUM_ARGS = [
  "--headless=new",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-default-apps",
  "--disable-extensions",
  "--no-default-browser-check",
  "--metrics-recording-only",
  "--mute-audio",
  // Belt and braces: no host resolves to anything except 127.0.0.1 itself.
  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
];

// The page renders its value with JavaScript after a delay, so reading it only
// works if we really wait for the element (no fixed sleep in the test).
const APP_HTML = `<!doctype html>
<html><head><meta charset="utf-8"><title>toolchain</title></head>
<body>
<div id="status">loading</div>
<script>
  setTimeout(() => {
    const el = document.createElement("span");
    el.id = "value";
    const ctx = new URLSearchParams(location.search).get("ctx");
    el.textContent = "ctx=" + ctx + ";cookie=" + document.cookie;
    document.body.appendChild(el);
    document.getElementById("status").textContent = "ready";
  }, ${RENDER_DELAY_MS});
</script>
</body></html>`;

/** Cookie header the server saw on each /app?ctx=X request. */
const cookieHeaderByCtx = new Map<string, string>();
const sessionValue = `alice-${crypto.randomUUID()}`;

let server: ReturnType<typeof Bun.serve>;
let baseUrl: string;
let browser: Browser | undefined;
/** Temporary root: profile/ is the --user-data-dir, xdg-config/ and xdg-cache/ the XDG dirs. */
let tempRoot: string;

type Proc = { pid: number; ppid: number; pgid: number; state: string; cmdline: string };

function listProcesses(): Proc[] {
  const out: Proc[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // Fields after "(comm)": state ppid pgrp ...
      const [state = "", ppid = "0", pgid = "0"] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8").replaceAll("\0", " ");
      out.push({ pid: Number(entry), ppid: Number(ppid), pgid: Number(pgid), state, cmdline });
    } catch {
      // the process exited while we looked
    }
  }
  return out;
}

/**
 * Live (non-zombie) processes belonging to this run's Chromium: the browser, its
 * descendants, its process group, and anything whose command line mentions our
 * temporary directory (e.g. the re-parented crashpad handlers).
 */
function chromiumProcessesOfThisRun(browserPid: number, marker: string): Proc[] {
  const procs = listProcesses();
  const byPid = new Map(procs.map((p) => [p.pid, p]));
  const descends = (p: Proc) => {
    for (let cur: Proc | undefined = p, hops = 0; cur && hops < 64; cur = byPid.get(cur.ppid), hops++) {
      if (cur.pid === browserPid) return true;
    }
    return false;
  };
  return procs.filter(
    (p) => p.state !== "Z" && (p.pgid === browserPid || p.cmdline.includes(marker) || descends(p)),
  );
}

beforeAll(async () => {
  server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const url = new URL(req.url);
      const html = { "content-type": "text/html; charset=utf-8" };
      if (url.pathname === "/login") {
        return new Response(APP_HTML, {
          headers: { ...html, "set-cookie": `session=${sessionValue}; Path=/; SameSite=Lax` },
        });
      }
      if (url.pathname === "/app") {
        cookieHeaderByCtx.set(url.searchParams.get("ctx") ?? "", req.headers.get("cookie") ?? "");
        return new Response(APP_HTML, { headers: html });
      }
      // Anything else (e.g. /favicon.ico) is a plain 404.
      return new Response("not found", { status: 404 });
    },
  });
  baseUrl = `http://127.0.0.1:${server.port}`;
  tempRoot = mkdtempSync(join(tmpdir(), "toolchain-chromium-"));
});

afterAll(async () => {
  try {
    await browser?.close();
  } finally {
    server?.stop(true);
    if (tempRoot) rmSync(tempRoot, { recursive: true, force: true });
  }
});

test("chromium exists where the scraper expects it", () => {
  expect(existsSync(CHROMIUM_PATH)).toBe(true);
});

test("puppeteer-core launches Chromium; two contexts read JS-rendered values; cookies are isolated", async () => {
  browser = await puppeteer.launch({
    executablePath: CHROMIUM_PATH,
    headless: true,
    userDataDir: join(tempRoot, "profile"),
    args: CHROMIUM_ARGS,
    env: {
      ...process.env,
      XDG_CONFIG_HOME: join(tempRoot, "xdg-config"),
      XDG_CACHE_HOME: join(tempRoot, "xdg-cache"),
    },
    timeout: 20_000,
    protocolTimeout: 20_000,
  });
  const browserPid = browser.process()?.pid ?? 0;
  expect(browserPid).toBeGreaterThan(0);
  expect(await browser.version()).toMatch(/Chrom/);

  const ctxA = await browser.createBrowserContext();
  const ctxB = await browser.createBrowserContext();
  const pageA = await ctxA.newPage();
  const pageB = await ctxB.newPage();

  // Context A logs in: the server sets a session cookie.
  await pageA.goto(`${baseUrl}/login`, { waitUntil: "domcontentloaded", timeout: 10_000 });

  // Load the app in both contexts concurrently and wait for the JS-rendered element.
  const readValue = async (page: typeof pageA, ctx: string) => {
    const started = performance.now();
    await page.goto(`${baseUrl}/app?ctx=${ctx}`, { waitUntil: "domcontentloaded", timeout: 10_000 });
    // Rendered only after RENDER_DELAY_MS: the element is absent right after load.
    const el = await page.waitForSelector("#value", { timeout: 5_000 });
    const text = await el!.evaluate((node) => node.textContent);
    return { text, ms: performance.now() - started };
  };
  const [a, b] = await Promise.all([readValue(pageA, "A"), readValue(pageB, "B")]);

  expect(a.text).toBe(`ctx=A;cookie=session=${sessionValue}`);
  expect(b.text).toBe("ctx=B;cookie=");
  expect(a.ms).toBeGreaterThanOrEqual(RENDER_DELAY_MS - 20);
  expect(b.ms).toBeGreaterThanOrEqual(RENDER_DELAY_MS - 20);
  expect(await pageA.$eval("#status", (n) => n.textContent)).toBe("ready");

  // The server saw the cookie from context A only.
  expect(cookieHeaderByCtx.get("A")).toBe(`session=${sessionValue}`);
  expect(cookieHeaderByCtx.get("B")).toBe("");

  // And the browser contexts' cookie jars agree.
  const cookiesA = await ctxA.cookies();
  const cookiesB = await ctxB.cookies();
  expect(cookiesA.map((c) => [c.name, c.value, c.domain])).toEqual([["session", sessionValue, "127.0.0.1"]]);
  expect(cookiesB).toEqual([]);

  // A cookie set programmatically in B does not leak into A either.
  await ctxB.setCookie({ name: "only_b", value: "1", domain: "127.0.0.1", path: "/" });
  expect((await ctxB.cookies()).map((c) => c.name)).toEqual(["only_b"]);
  expect((await ctxA.cookies()).map((c) => c.name)).toEqual(["session"]);

  // Sanity check of the leftover detector: while running, it sees the browser,
  // its zygotes/renderers/utility processes and the crashpad handler.
  const running = chromiumProcessesOfThisRun(browserPid, tempRoot);
  expect(running.map((p) => p.pid)).toContain(browserPid);
  expect(running.some((p) => p.cmdline.includes("--type=renderer"))).toBe(true);

  await ctxA.close();
  await ctxB.close();
  await browser.close();
  browser = undefined;

  // No Chromium process of this run survives close(). (Exited children that were
  // re-parented to PID 1 can linger briefly as zombies until it reaps them: they
  // are not running and are not counted.)
  const deadline = Date.now() + 5_000;
  let leftovers = chromiumProcessesOfThisRun(browserPid, tempRoot);
  while (leftovers.length > 0 && Date.now() < deadline) {
    await Bun.sleep(50);
    leftovers = chromiumProcessesOfThisRun(browserPid, tempRoot);
  }
  expect(leftovers.map((p) => `${p.pid} ${p.cmdline.slice(0, 120)}`)).toEqual([]);
  for (const p of running) {
    const state = listProcesses().find((q) => q.pid === p.pid)?.state;
    expect(state === undefined || state === "Z").toBe(true);
  }
}, 45_000);
