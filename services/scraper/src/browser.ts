/**
 * One Chromium per process, driven by puppeteer-core (Debian's Chromium, never a download). Checks
 * borrow a page from a pool: by default one browser context per host with a few reused pages (fast,
 * and no cookies cross hosts); `isolation=MONITOR` gets the monitor's own context, whose cookies
 * outlive the context when it is closed for being idle. Every context sends all its traffic through
 * the SSRF guard proxy. A crashed or killed browser is relaunched on the next check.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Counter, Gauge } from "prom-client";
import puppeteer, { type Browser, type BrowserContext, type Cookie, type Page } from "puppeteer-core";
import type { Logger } from "@coursemesh/shared/logger.ts";
import { registry } from "@coursemesh/shared/metrics.ts";

const PROFILE_PREFIX = "coursemesh-chromium-";

/** Removes temporary profiles left by scraper processes that died without cleaning up (named after their pid). */
function removeOrphanedProfiles(): void {
  for (const entry of readdirSync(tmpdir())) {
    if (!entry.startsWith(PROFILE_PREFIX)) continue;
    const pid = Number(entry.slice(PROFILE_PREFIX.length).split("-")[0]);
    if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) continue;
    try {
      process.kill(pid, 0);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ESRCH") rmSync(join(tmpdir(), entry), { recursive: true, force: true });
    }
  }
}

/** Where Debian, Ubuntu and Chrome installs put the browser; the first that exists wins. */
const CHROMIUM_CANDIDATES = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome", "/usr/bin/google-chrome-stable", "/snap/bin/chromium"];

/** The Chromium executable: the configured one, else the first installed candidate. */
export function findChromium(configured: string | undefined): string {
  if (configured) {
    if (!existsSync(configured)) throw new Error(`SCRAPER_CHROMIUM_PATH=${configured} does not exist`);
    return configured;
  }
  const found = CHROMIUM_CANDIDATES.find((path) => existsSync(path));
  if (!found) throw new Error(`no Chromium found (looked at ${CHROMIUM_CANDIDATES.join(", ")}); install it (Debian: apt-get install chromium) or set SCRAPER_CHROMIUM_PATH`);
  return found;
}

/** Chromium flags: headless, no background traffic of its own, and nothing that could go around the proxy. */
export function chromiumArgs(proxyUrl: string): string[] {
  return [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--mute-audio",
    "--disable-features=Translate,MediaRouter,OptimizationHints,InterestFeedContentSuggestions,AutofillServerCommunication",
    // Every context also gets the proxy explicitly; this covers the default context.
    `--proxy-server=${proxyUrl}`,
    // Chromium skips proxies for loopback unless told not to; the guard must see those too.
    "--proxy-bypass-list=<-loopback>",
    // Chromium itself resolves no name (all go to the proxy), so nothing can sidestep the guard.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--webrtc-ip-handling-policy=disable_non_proxied_udp",
  ];
}

export interface BrowserPoolOptions {
  chromiumPath: string;
  proxyUrl: string;
  /** Contexts kept open; the least recently used idle one closes first. */
  maxContexts: number;
  /** Idle contexts close after this long. */
  contextIdleMs: number;
  /** Reused pages kept per context. */
  pagesPerContext: number;
  logger: Logger;
}

/** Which context a check runs in. */
export type ContextKey = { kind: "host"; host: string } | { kind: "monitor"; monitorId: string };

interface ContextEntry {
  key: string;
  context: BrowserContext;
  idle: Page[];
  busy: number;
  lastUsed: number;
  monitorId?: string;
}

/** The browser went away under a check (crash, kill, relaunch): not the page's fault. */
export class BrowserGoneError extends Error {
  override name = "BrowserGoneError";
}

const launches = new Counter({ name: "coursemesh_scraper_browser_launches_total", help: "Chromium launches (the first and every relaunch after a crash).", registers: [registry] });
const openContexts = new Gauge({ name: "coursemesh_scraper_browser_contexts", help: "Browser contexts open.", registers: [registry] });
const openPages = new Gauge({ name: "coursemesh_scraper_browser_pages", help: "Pages open (busy and idle).", registers: [registry] });

// Resource types a seat check never needs; blocking them saves bandwidth, memory and time.
const BLOCKED_TYPES = ["Image", "Font", "Media"] as const;

/** One Chromium and its pool of contexts and pages. */
export class BrowserPool {
  private browser: Browser | undefined;
  private launching: Promise<Browser> | undefined;
  private generation = 0;
  private launchCount = 0;
  private readonly contexts = new Map<string, ContextEntry>();
  /** Cookies of isolated monitors whose idle context was closed (bounded). */
  private readonly savedCookies = new Map<string, Cookie[]>();
  private profileDir: string | undefined;
  private closed = false;
  private readonly sweeper: ReturnType<typeof setInterval>;

  constructor(private readonly options: BrowserPoolOptions) {
    this.sweeper = setInterval(() => void this.closeIdleContexts(), Math.min(options.contextIdleMs, 10_000));
    this.sweeper.unref?.();
  }

  /** Launches Chromium if it is not running (one launch at a time). */
  async ensureBrowser(): Promise<Browser> {
    if (this.closed) throw new BrowserGoneError("the browser pool is closed");
    if (this.browser?.connected) return this.browser;
    this.launching ??= this.launch().finally(() => {
      this.launching = undefined;
    });
    return this.launching;
  }

  private async launch(): Promise<Browser> {
    this.forgetBrowser();
    removeOrphanedProfiles();
    const root = mkdtempSync(join(tmpdir(), `${PROFILE_PREFIX}${process.pid}-`));
    this.profileDir = root;
    const browser = await puppeteer.launch({
      executablePath: this.options.chromiumPath,
      headless: true,
      userDataDir: join(root, "profile"),
      args: chromiumArgs(this.options.proxyUrl),
      // Over a pipe, Chromium exits when this process dies, even by SIGKILL: no orphaned browsers.
      pipe: true,
      // Debian's wrapper and the crash handler write under XDG dirs whatever --user-data-dir says.
      env: { ...process.env, XDG_CONFIG_HOME: join(root, "xdg-config"), XDG_CACHE_HOME: join(root, "xdg-cache") },
      timeout: 30_000,
      protocolTimeout: 30_000,
      handleSIGINT: false,
      handleSIGTERM: false,
      handleSIGHUP: false,
    });
    const generation = ++this.generation;
    browser.on("disconnected", () => {
      if (this.generation !== generation || this.closed) return;
      this.options.logger.warn({ pid: browser.process()?.pid }, "Chromium went away; it is relaunched for the next check");
      this.forgetBrowser();
    });
    this.browser = browser;
    this.launchCount++;
    launches.inc();
    this.options.logger.info({ pid: browser.process()?.pid, version: await browser.version() }, "Chromium launched");
    return browser;
  }

  /** Drops every reference to the current browser (its contexts died with it) and removes its profile. */
  private forgetBrowser(): void {
    const old = this.browser;
    this.browser = undefined;
    this.generation++;
    this.contexts.clear();
    openContexts.set(0);
    openPages.set(0);
    if (old) {
      // Make sure the whole process tree is gone before its profile is removed.
      old.process()?.kill("SIGKILL");
    }
    if (this.profileDir) {
      const dir = this.profileDir;
      this.profileDir = undefined;
      setTimeout(() => rmSync(dir, { recursive: true, force: true }), 1000).unref?.();
    }
  }

  /** The current browser's process id (tests kill it to prove relaunching). */
  get browserPid(): number | undefined {
    return this.browser?.process()?.pid;
  }

  /**
   * Runs `fn` with a pooled page of the context for `key`. The page goes back to the pool afterwards
   * unless `fn` threw or called `discard()` (a page left mid-navigation by a hung server is closed).
   */
  async withPage<T>(key: ContextKey, fn: (page: Page, discard: () => void) => Promise<T>): Promise<T> {
    const browser = await this.ensureBrowser();
    const generation = this.generation;
    let entry: ContextEntry;
    let page: Page;
    try {
      entry = await this.contextFor(browser, key);
      entry.busy++;
      entry.lastUsed = Date.now();
      page = entry.idle.pop() ?? (await this.newPage(entry));
    } catch (error) {
      throw this.generation !== generation || !browser.connected ? new BrowserGoneError(`the browser went away: ${(error as Error).message}`) : error;
    }
    let reusable = false;
    let discarded = false;
    try {
      const result = await fn(page, () => {
        discarded = true;
      });
      reusable = !discarded;
      return result;
    } catch (error) {
      if (this.generation !== generation || !browser.connected) throw new BrowserGoneError(`the browser went away during the check: ${(error as Error).message}`);
      throw error;
    } finally {
      entry.busy--;
      entry.lastUsed = Date.now();
      if (this.generation === generation) {
        if (reusable && !page.isClosed() && entry.idle.length < this.options.pagesPerContext && this.contexts.get(entry.key) === entry) {
          entry.idle.push(page);
        } else {
          void page.close().catch(() => {});
          openPages.dec();
        }
      }
      void this.closeSurplusContexts();
    }
  }

  private async contextFor(browser: Browser, key: ContextKey): Promise<ContextEntry> {
    const name = key.kind === "host" ? `host:${key.host}` : `monitor:${key.monitorId}`;
    const existing = this.contexts.get(name);
    if (existing) return existing;
    const context = await browser.createBrowserContext({ proxyServer: this.options.proxyUrl, proxyBypassList: ["<-loopback>"] });
    const entry: ContextEntry = { key: name, context, idle: [], busy: 0, lastUsed: Date.now(), monitorId: key.kind === "monitor" ? key.monitorId : undefined };
    // Two checks may have raced to create it; keep the first, close ours.
    const raced = this.contexts.get(name);
    if (raced) {
      void context.close().catch(() => {});
      return raced;
    }
    this.contexts.set(name, entry);
    openContexts.set(this.contexts.size);
    if (entry.monitorId) {
      const cookies = this.savedCookies.get(entry.monitorId);
      if (cookies?.length) await context.setCookie(...cookies);
    }
    return entry;
  }

  private async newPage(entry: ContextEntry): Promise<Page> {
    const page = await entry.context.newPage();
    openPages.inc();
    // Fresh data on every check: the registrar's page must not come from the HTTP cache.
    await page.setCacheEnabled(false);
    const session = await page.createCDPSession();
    // Only blocked types pause in the Fetch domain, so ordinary requests pay nothing for this.
    await session.send("Fetch.enable", { patterns: BLOCKED_TYPES.map((resourceType) => ({ resourceType, requestStage: "Request" as const })) });
    session.on("Fetch.requestPaused", (event: { requestId: string }) => {
      void session.send("Fetch.failRequest", { requestId: event.requestId, errorReason: "BlockedByClient" }).catch(() => {});
    });
    return page;
  }

  /** Closes least recently used idle contexts beyond the limit. */
  private async closeSurplusContexts(): Promise<void> {
    if (this.contexts.size <= this.options.maxContexts) return;
    const idle = [...this.contexts.values()].filter((e) => e.busy === 0).sort((a, b) => a.lastUsed - b.lastUsed);
    for (const entry of idle.slice(0, this.contexts.size - this.options.maxContexts)) await this.closeContext(entry);
  }

  private async closeIdleContexts(): Promise<void> {
    const cutoff = Date.now() - this.options.contextIdleMs;
    for (const entry of [...this.contexts.values()]) if (entry.busy === 0 && entry.lastUsed < cutoff) await this.closeContext(entry);
  }

  private async closeContext(entry: ContextEntry): Promise<void> {
    if (this.contexts.get(entry.key) !== entry) return;
    this.contexts.delete(entry.key);
    openContexts.set(this.contexts.size);
    openPages.dec(entry.idle.length);
    try {
      if (entry.monitorId) {
        const cookies = await entry.context.cookies();
        if (this.savedCookies.size >= 10_000) this.savedCookies.delete(this.savedCookies.keys().next().value!);
        this.savedCookies.set(entry.monitorId, cookies);
      }
      await entry.context.close();
    } catch {
      // The browser may be gone already; nothing to close then.
    }
  }

  /** Forgets an isolated monitor's saved cookies (the monitor was deleted). */
  forgetMonitor(monitorId: string): void {
    this.savedCookies.delete(monitorId);
    const entry = this.contexts.get(`monitor:${monitorId}`);
    if (entry && entry.busy === 0) void this.closeContext(entry);
  }

  /** Contexts and pages open now (tests and the benchmark look at pooling). */
  stats(): { contexts: number; idlePages: number; busy: number; launches: number } {
    let idlePages = 0;
    let busy = 0;
    for (const entry of this.contexts.values()) {
      idlePages += entry.idle.length;
      busy += entry.busy;
    }
    return { contexts: this.contexts.size, idlePages, busy, launches: this.launchCount };
  }

  /** Closes the browser and removes its profile. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.sweeper);
    const browser = this.browser;
    this.browser = undefined;
    this.contexts.clear();
    if (browser) {
      await Promise.race([browser.close().catch(() => {}), Bun.sleep(5000)]);
      browser.process()?.kill("SIGKILL");
    }
    if (this.profileDir) rmSync(this.profileDir, { recursive: true, force: true });
    this.profileDir = undefined;
  }
}
