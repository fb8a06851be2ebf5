/**
 * One check of one page: load it (headless Chromium, or `fetch` in HTTP mode), wait for the
 * extractor's target — never a fixed sleep — and read the seats. Knows nothing of the database; the
 * scheduler records what it returns. Errors come back in words a person can act on.
 */
import { TimeoutError, type HTTPResponse, type Page } from "puppeteer-core";
import { BrowserGoneError, type BrowserPool } from "./browser.ts";
import { readJsonPath, readSeatsFromDocument, readSeatsFromHtml, seatsFromReading, type ExtractorSpec, type PageReading } from "./extract.ts";
import { decideDestination, REFUSED_HEADER, type GuardPolicy, type GuardProxy } from "./guard-proxy.ts";
import type { SeatReading } from "./seats.ts";
import { SpanStatusCode, withSpan } from "@coursemesh/shared/telemetry.ts";

/** What a check needs to know about its monitor. */
export interface CheckTarget {
  id: string;
  url: string;
  extractor: ExtractorSpec;
  fetchMode: "BROWSER" | "HTTP";
  isolation: "HOST" | "MONITOR";
}

/**
 * `ok`: seats were read. `failed`: the page is at fault (counts towards ERROR). `aborted`: we are
 * (the browser crashed, the process is stopping): nothing is held against the monitor.
 */
export type CheckOutcome =
  | { kind: "ok"; seats: SeatReading; observedAt: Date }
  | { kind: "failed"; error: string; observedAt: Date }
  | { kind: "aborted"; error: string };

export interface Checker {
  check(target: CheckTarget, signal?: AbortSignal): Promise<CheckOutcome>;
}

export interface CheckerOptions {
  browser: BrowserPool;
  proxy: GuardProxy;
  policy: GuardPolicy;
  timeoutMs: number;
}

const MAX_REDIRECTS = 5;
const MAX_BODY_BYTES = 5 * 1024 * 1024;
const USER_AGENT = "coursemesh-scraper/1.0 (seat monitor)";

/** The per-host pool key of a URL: host and port, as the browser's same-origin rules see them. */
export function hostKey(url: string): string {
  const parsed = new URL(url);
  return parsed.host.toLowerCase();
}

const seconds = (ms: number) => `${Math.round(ms / 100) / 10} s`;

/**
 * A page-side wait for `spec`'s target, as one expression Chromium evaluates (a single round trip):
 * it reads at once, then again on every DOM change, and settles with the reading, or at the timeout
 * with why there is none.
 */
function waitExpression(spec: ExtractorSpec, timeoutMs: number): string {
  return `new Promise((resolve) => {
    const read = () => (${readSeatsFromDocument.toString()})(document, ${JSON.stringify(spec)});
    const first = read();
    if (first.found) return resolve(first);
    let timer;
    const observer = new MutationObserver(() => {
      const reading = read();
      if (reading.found) finish(reading);
    });
    const finish = (reading) => {
      observer.disconnect();
      clearTimeout(timer);
      resolve(reading);
    };
    observer.observe(document, { childList: true, subtree: true, characterData: true });
    timer = setTimeout(() => finish({ ...read(), timedOut: true }), ${Math.max(1, Math.round(timeoutMs))});
  })`;
}

function portOf(url: URL): number {
  return Number(url.port || (url.protocol === "https:" ? 443 : 80));
}

/** Explains a navigation error: the guard's refusal when there was one, else Chromium's net error. */
function navigationError(error: unknown, url: URL, proxy: GuardProxy, timeoutMs: number): string {
  if (error instanceof TimeoutError) return `the page did not load within ${seconds(timeoutMs)}`;
  const message = (error as Error).message ?? String(error);
  const refusal = proxy.refusalFor(url.hostname, portOf(url));
  if (refusal && /ERR_TUNNEL_CONNECTION_FAILED|ERR_ACCESS_DENIED|ERR_BLOCKED/.test(message)) return `blocked by the SSRF guard: ${refusal}`;
  const net = /net::(ERR_[A-Z_]+)/.exec(message)?.[1];
  return net ? `could not load the page (${net})` : `could not load the page: ${message}`;
}

function responseError(response: HTTPResponse | Response | null, fallbackStatus?: number): string | undefined {
  if (!response) return undefined;
  const headers = response instanceof Response ? response.headers : new Headers(response.headers());
  const refused = headers.get(REFUSED_HEADER);
  if (refused) return `blocked by the SSRF guard: ${refused}`;
  const status = response instanceof Response ? response.status : response.status();
  if (status >= 400) return `the page answered HTTP ${status}`;
  return fallbackStatus && fallbackStatus >= 400 ? `the page answered HTTP ${fallbackStatus}` : undefined;
}

/** Builds the checker both modes share. */
export function createChecker(options: CheckerOptions): Checker {
  const { browser, proxy, policy, timeoutMs } = options;

  async function readInBrowser(page: Page, target: CheckTarget, deadline: number, discard: () => void): Promise<CheckOutcome> {
    const url = new URL(target.url);
    const remaining = () => Math.max(1, deadline - Date.now());
    let response: HTTPResponse | null;
    try {
      response = await page.goto(target.url, { waitUntil: "domcontentloaded", timeout: remaining() });
    } catch (error) {
      if (error instanceof BrowserGoneError) throw error;
      discard();
      return { kind: "failed", error: navigationError(error, url, proxy, timeoutMs), observedAt: new Date() };
    }
    const badResponse = responseError(response);
    if (badResponse) return { kind: "failed", error: badResponse, observedAt: new Date() };
    let reading: (PageReading & { timedOut?: boolean }) | undefined;
    while (!reading) {
      const evaluation = page.evaluate(waitExpression(target.extractor, remaining())) as Promise<PageReading & { timedOut?: boolean }>;
      evaluation.catch(() => {});
      // A page whose script hogs its thread never settles the wait: give up on it from here.
      let stalled: ReturnType<typeof setTimeout> | undefined;
      const stall = new Promise<"stalled">((resolve) => (stalled = setTimeout(() => resolve("stalled"), remaining() + 1000)));
      try {
        const settled = await Promise.race([evaluation, stall]);
        if (settled === "stalled") {
          discard();
          return { kind: "failed", error: `the page stopped responding (waited ${seconds(timeoutMs)})`, observedAt: new Date() };
        }
        reading = settled;
      } catch (error) {
        // The page navigated on its own (a script redirect) while we waited: wait again in the new document.
        if (!/context was destroyed|Cannot find context/i.test((error as Error).message) || remaining() <= 1) throw error;
        await page.waitForNavigation({ waitUntil: "domcontentloaded", timeout: remaining() }).catch(() => {});
      } finally {
        clearTimeout(stalled);
      }
    }
    if (!reading.found) {
      if (reading.timedOut) discard();
      return { kind: "failed", error: reading.timedOut ? `${reading.reason} (waited ${seconds(timeoutMs)})` : reading.reason, observedAt: new Date() };
    }
    return { kind: "ok", seats: seatsFromReading(reading, target.extractor), observedAt: new Date() };
  }

  async function checkInBrowser(target: CheckTarget, deadline: number): Promise<CheckOutcome> {
    const key = target.isolation === "MONITOR" ? ({ kind: "monitor", monitorId: target.id } as const) : ({ kind: "host", host: hostKey(target.url) } as const);
    return withSpan("scraper.browser_read", { attributes: { "coursemesh.scraper.monitor_id": target.id, "coursemesh.scraper.isolation": target.isolation } }, async (span) => {
      const outcome = await browser.withPage(key, (page, discard) => readInBrowser(page, target, deadline, discard));
      if (outcome.kind !== "ok") span.setStatus({ code: SpanStatusCode.ERROR, message: outcome.error });
      return outcome;
    });
  }

  async function fetchPage(target: CheckTarget, signal: AbortSignal): Promise<{ response: Response } | { error: string }> {
    let url = new URL(target.url);
    for (let hop = 0; ; hop++) {
      if (url.protocol !== "http:" && url.protocol !== "https:") return { error: `redirected to a ${url.protocol} URL; only http and https are allowed` };
      // Checked here for a clear message; the proxy checks again and connects to what it checked.
      const decision = await decideDestination(url.hostname, portOf(url), policy);
      if (!decision.allowed) return { error: `blocked by the SSRF guard: ${decision.reason}${hop > 0 ? ` (after a redirect to ${url.href})` : ""}` };
      const response = await fetch(url, {
        redirect: "manual",
        proxy: proxy.url,
        signal,
        headers: { "user-agent": USER_AGENT, accept: "text/html,application/xhtml+xml,application/json;q=0.9,*/*;q=0.5" },
      });
      const location = response.headers.get("location");
      if (response.status >= 300 && response.status < 400 && location) {
        await response.body?.cancel();
        if (hop >= MAX_REDIRECTS) return { error: `more than ${MAX_REDIRECTS} redirects` };
        url = new URL(location, url);
        continue;
      }
      return { response };
    }
  }

  async function readBody(response: Response): Promise<string> {
    const declared = Number(response.headers.get("content-length") ?? 0);
    if (declared > MAX_BODY_BYTES) throw new Error(`the page is ${declared} bytes; the limit is ${MAX_BODY_BYTES}`);
    const reader = response.body?.getReader();
    if (!reader) return "";
    const chunks: Uint8Array[] = [];
    let size = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > MAX_BODY_BYTES) {
        await reader.cancel();
        throw new Error(`the page is larger than ${MAX_BODY_BYTES} bytes`);
      }
      chunks.push(value);
    }
    return Buffer.concat(chunks).toString("utf8");
  }

  async function checkOverHttp(target: CheckTarget, signal: AbortSignal): Promise<CheckOutcome> {
    try {
      const fetched = await fetchPage(target, signal);
      if ("error" in fetched) return { kind: "failed", error: fetched.error, observedAt: new Date() };
      const { response } = fetched;
      const bad = responseError(response);
      if (bad) {
        await response.body?.cancel();
        return { kind: "failed", error: bad, observedAt: new Date() };
      }
      const body = await readBody(response);
      const observedAt = new Date();
      const spec = target.extractor;
      let reading: PageReading;
      if (spec.kind === "json" && (/json/i.test(response.headers.get("content-type") ?? "") || /^\s*[[{]/.test(body))) {
        try {
          reading = readJsonPath(JSON.parse(body), spec);
        } catch {
          reading = { found: false, reason: "the response is not valid JSON" };
        }
      } else {
        reading = readSeatsFromHtml(body, spec);
      }
      if (!reading.found) return { kind: "failed", error: reading.reason, observedAt };
      return { kind: "ok", seats: seatsFromReading(reading, spec), observedAt };
    } catch (error) {
      if (signal.aborted) {
        const reason = signal.reason as Error | undefined;
        if (reason?.name === "TimeoutError") return { kind: "failed", error: `the page did not answer within ${seconds(timeoutMs)}`, observedAt: new Date() };
        return { kind: "aborted", error: reason?.message ?? "check cancelled" };
      }
      return { kind: "failed", error: `could not load the page: ${(error as Error).message}`, observedAt: new Date() };
    }
  }

  return {
    async check(target, outer) {
      const timeout = AbortSignal.timeout(timeoutMs);
      const signal = outer ? AbortSignal.any([outer, timeout]) : timeout;
      try {
        if (target.fetchMode === "HTTP") return await checkOverHttp(target, signal);
        const browserCheck = checkInBrowser(target, Date.now() + timeoutMs);
        if (!outer) return await browserCheck;
        // A cancelled check answers at once; the page finishes (or times out) on its own and goes back to the pool.
        browserCheck.catch(() => {});
        return await Promise.race([
          browserCheck,
          new Promise<CheckOutcome>((resolve) => {
            const onAbort = () => resolve({ kind: "aborted", error: "check cancelled" });
            if (outer.aborted) onAbort();
            else outer.addEventListener("abort", onAbort, { once: true });
          }),
        ]);
      } catch (error) {
        if (error instanceof BrowserGoneError) return { kind: "aborted", error: error.message };
        if (outer?.aborted) return { kind: "aborted", error: "check cancelled" };
        return { kind: "failed", error: `the check failed: ${(error as Error).message}`, observedAt: new Date() };
      }
    },
  };
}
