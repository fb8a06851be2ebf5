/**
 * The dashboard end to end in real Chromium against the four running services, the demo registrar
 * and an SMTP server, all on loopback: sign in, add a monitor (bad input first), see a seat change
 * arrive without a reload, pause and resume, read the history; upload a PDF by drag and drop and
 * watch the bar reach 100 and the outline appear; a registrar creates a course and sees its
 * counts move; a student's enrollment decision and waitlist position arrive live, and a course's
 * page shows a drop promote the waitlist head live. A screenshot of
 * each page is saved to .tmp/screenshots/web/.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import puppeteer, { type Browser, type BrowserContext, type Page } from "puppeteer-core";
import { EnrollmentServiceClient } from "@coursemesh/proto/coursemesh/allocator/v1/allocator.ts";
import { FetchMode, MonitorServiceClient } from "@coursemesh/proto/coursemesh/scraper/v1/scraper.ts";
import { createClient, unary } from "@coursemesh/shared/grpc/client.ts";
import { eventually } from "@coursemesh/shared/testing/eventually.ts";
import { testToken } from "@coursemesh/shared/testing/harness.ts";
import { corruptPdf, coursePdf, longCoursePdf } from "../../ingest/test/pdfs.ts";
import { startSmtp, type TestSmtp } from "../../notifier/test/helpers.ts";
import { startRegistrar, type Registrar } from "../../scraper/src/demo/registrar.ts";
import { startStack, type Stack } from "./stack.ts";

// Functions given to page.evaluate and friends run in the browser; these name its globals for the
// type checker (this project compiles without the DOM library).
declare const document: any;
declare const window: any;
declare const DataTransfer: any;
declare const DragEvent: any;
declare const MutationObserver: any;

const SCREENSHOTS = new URL("../../../.tmp/screenshots/web/", import.meta.url).pathname;
const WAIT_MS = 20_000;

let stack: Stack;
let smtp: TestSmtp;
let registrar: Registrar;
let browser: Browser;
let profile: string;

beforeAll(async () => {
  mkdirSync(SCREENSHOTS, { recursive: true });
  smtp = await startSmtp();
  registrar = startRegistrar({ renderDelayMs: 200 });
  stack = await startStack({
    backends: ["notifier", "scraper", "allocator", "ingest"],
    env: {
      notifier: { NOTIFIER_SMTP_URL: smtp.url, NOTIFIER_POLL_MS: "100", NOTIFIER_COALESCE_SECONDS: "0" },
      scraper: {
        SCRAPER_ALLOW_PRIVATE_HOSTS: "true",
        SCRAPER_MIN_INTERVAL_SECONDS: "1",
        SCRAPER_POLL_MS: "100",
        SCRAPER_CHECK_TIMEOUT_MS: "8000",
        SCRAPER_HOST_GAP_MS: "0",
      },
      // Requests are accepted but decided only at SIGUSR2, so the test sees a decision arrive.
      allocator: { ALLOCATOR_PAUSED: "true" },
      web: { WEB_MAX_UPLOAD_BYTES: String(2 * 1024 * 1024) },
    },
  });
  profile = mkdtempSync(join(tmpdir(), "cm-web-e2e-"));
  browser = await puppeteer.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    userDataDir: profile,
    pipe: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-extensions",
      // Loopback only: no name resolves, so nothing leaves the machine.
      "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ],
    env: { ...process.env, XDG_CONFIG_HOME: join(profile, "xdg-config"), XDG_CACHE_HOME: join(profile, "xdg-cache") },
  });
}, 120_000);

afterAll(async () => {
  await browser?.close().catch(() => {});
  if (profile) rmSync(profile, { recursive: true, force: true });
  await stack?.stop();
  await registrar?.stop();
  await smtp?.close();
}, 60_000);

/** A browser context of its own (cookies included), signed in through the sign-in form. */
async function signIn(subject: string, roles: ("student" | "registrar" | "operator")[], email?: string): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  await page.goto(`${stack.web.httpUrl}/monitors`);
  // Without a session, the dashboard shows the sign-in page.
  expect(new URL(page.url()).pathname).toBe("/signin");
  await page.type("#token", await testToken(subject, roles, email));
  await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  expect(new URL(page.url()).pathname).not.toBe("/signin");
  return { context, page };
}

async function shot(page: Page, name: string) {
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

const text = (page: Page, selector: string) => page.$eval(selector, (el) => (el.textContent ?? "").trim()).catch(() => "");

test("sign in, add a monitor, see a seat change live, pause and resume, read the history", async () => {
  const { context, page } = await signIn("erin", ["student"], "erin@example.edu");
  await page.goto(`${stack.web.httpUrl}/signin`);
  await shot(page, "signin");
  await page.goto(`${stack.web.httpUrl}/monitors`);
  expect(await page.$$eval("nav a", (links) => links.map((a) => a.textContent))).toEqual(["Enrollment", "Monitors", "Uploads"]);

  // Bad input: the scraper's own message appears next to the field, nothing is added.
  await page.type("#monitor-url", "registrar.example/schedule");
  await page.type("#monitor-course_code", "CMPUT 201");
  await page.type("#monitor-section", "LEC A1");
  await page.click("form[data-action=create] button[type=submit]");
  await page.waitForFunction(() => (document.querySelector("#monitor-url-error")?.textContent ?? "") !== "", { timeout: WAIT_MS });
  expect(await text(page, "#monitor-url-error")).toBe("must be an absolute http(s) URL");
  expect(await page.$eval("#monitor-url", (el) => el.getAttribute("aria-invalid"))).toBe("true");
  expect(await page.$$("tr[data-monitor]")).toHaveLength(0);
  await shot(page, "monitors-bad-input");

  // A good monitor on the demo registrar.
  registrar.setSeats("web", "CMPUT 201", "LEC A1", { open: 1, capacity: 30, waitlist: 0 });
  await page.$eval("#monitor-url", (el) => ((el as any).value = ""));
  await page.type("#monitor-url", `${registrar.url}/pages/web`);
  await page.$eval("#monitor-interval_seconds", (el) => ((el as any).value = "1"));
  await page.type("#monitor-notify_emails", "erin@example.edu");
  await page.click("form[data-action=create] button[type=submit]");
  await page.waitForSelector("tr[data-monitor]", { timeout: WAIT_MS });
  expect(await text(page, "#monitor-url-error")).toBe("");
  await page.waitForFunction(() => document.querySelector("[data-seats]")?.textContent === "1/30 open", { timeout: WAIT_MS });
  // Marks this page load: a reload would forget it.
  await page.evaluate(() => (window.sameLoad = true));

  registrar.setSeats("web", "CMPUT 201", "LEC A1", { open: 3, capacity: 30, waitlist: 0 });
  await page.waitForFunction(() => document.querySelector("[data-seats]")?.textContent === "3/30 open", { timeout: WAIT_MS });
  expect(await page.evaluate(() => window.sameLoad)).toBe(true);
  expect(await text(page, "[data-live-status]")).toContain("1/30 open → 3/30 open");
  expect(await text(page, "tr[data-monitor] td[data-label=Health]")).toBe("Healthy");
  expect(await text(page, "tr[data-monitor] td[data-label='Last checked']")).toMatch(/^\d+ s ago$/);
  await shot(page, "monitors");
  // On a phone the table becomes cards and nothing scrolls sideways.
  await page.setViewport({ width: 390, height: 844 });
  expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
  await shot(page, "monitors-phone");
  await page.setViewport({ width: 1280, height: 900 });

  // Pause and resume keep the monitor's state.
  await page.click("form[data-action=pause] button");
  await page.waitForSelector("tr[data-monitor][data-mode=PAUSED]", { timeout: WAIT_MS });
  expect(await text(page, "[data-seats]")).toBe("3/30 open");
  // Resume from the keyboard.
  await page.focus("form[data-action=resume] button");
  await page.keyboard.press("Enter");
  await page.waitForSelector("tr[data-monitor][data-mode=ACTIVE]", { timeout: WAIT_MS });
  expect(await text(page, "[data-seats]")).toBe("3/30 open");
  expect(await page.evaluate(() => window.sameLoad)).toBe(true);

  // The history: the change and the email it caused, in a modal that the keyboard can close.
  await smtp.waitFor(1, WAIT_MS);
  await page.click("a[data-history]");
  await page.waitForFunction(() => document.querySelector("#history-dialog [data-history-list]")?.textContent?.includes("erin@example.edu"), { timeout: WAIT_MS });
  const history = await text(page, "#history-dialog [data-history-list]");
  expect(history).toContain("1/30 open → 3/30 open");
  expect(history).toMatch(/(Sent|Pending): .* to erin@example\.edu/);
  expect(await page.$eval("#history-dialog", (el) => (el as any).open)).toBe(true);
  await shot(page, "monitor-history");
  await page.keyboard.press("Escape");
  await page.waitForFunction(() => !document.querySelector("#history-dialog").open, { timeout: WAIT_MS });
  expect(await page.evaluate(() => document.activeElement?.hasAttribute("data-history"))).toBe(true);

  // Check now answers with a fresh check; delete (confirmed) removes the row.
  const checkedBefore = await page.$eval("tr[data-monitor] time", (el) => el.getAttribute("datetime"));
  await page.click("form[data-action=check] button");
  await page.waitForFunction((before: string) => document.querySelector("tr[data-monitor] time")?.getAttribute("datetime") !== before, { timeout: WAIT_MS }, checkedBefore!);
  // A second tab shows the same monitor; the deletion in the first takes it off the second live.
  const other = await context.newPage();
  await other.goto(`${stack.web.httpUrl}/monitors`);
  await other.waitForSelector("tr[data-monitor]", { timeout: WAIT_MS });
  await other.evaluate(() => (window.sameLoad = true));
  // Its live stream is open once a check (one a second) arrives on it; only then can it hear of the deletion.
  const shownCheck = await other.$eval("tr[data-monitor] time", (el) => el.getAttribute("datetime"));
  await other.waitForFunction((before: string) => document.querySelector("tr[data-monitor] time")?.getAttribute("datetime") !== before, { timeout: WAIT_MS }, shownCheck!);
  await page.bringToFront();
  page.once("dialog", (dialog) => void dialog.accept());
  await page.click("form[data-action=delete] button");
  await page.waitForFunction(() => document.querySelectorAll("tr[data-monitor]").length === 0, { timeout: WAIT_MS });
  expect(await page.$eval("[data-empty]", (el) => (el as any).hidden)).toBe(false);
  await other.waitForFunction(() => document.querySelectorAll("tr[data-monitor]").length === 0, { timeout: WAIT_MS });
  expect(await other.evaluate(() => window.sameLoad)).toBe(true);
  expect(await other.$eval("[data-empty]", (el) => (el as any).hidden)).toBe(false);
  expect(await text(other, "[data-live-status]")).toBe("Deleted elsewhere.");
  await context.close();
}, 90_000);

test("a monitor deleted while the page's live stream was not yet connected leaves the page when it connects", async () => {
  const { context, page } = await signIn("hal", ["student"]);
  const token = await testToken("hal", ["student"]);
  const scraper = createClient(MonitorServiceClient, stack.services.scraper!.grpcAddress, { caller: "test" });
  const create = (section: string) =>
    unary(
      scraper.createMonitor.bind(scraper),
      {
        url: `${registrar.url}/pages/hal`,
        label: `CMPUT 301 ${section}`,
        intervalSeconds: 3600,
        notifyEmails: [],
        extractor: { kind: { $case: "beartracks", value: { courseCode: "CMPUT 301", sectionLabel: section } } },
        fetchMode: FetchMode.FETCH_MODE_BROWSER,
        isolation: 0,
      },
      { token },
    ).then((answer) => answer.monitor!.id);
  try {
    const [gone, kept] = [await create("LEC A1"), await create("LEC A2")];
    // The page's live stream is held back until the monitor is gone.
    let release: () => void = () => {};
    const held = new Promise<void>((resolve) => (release = resolve));
    await page.setRequestInterception(true);
    page.on("request", (request) => {
      if (new URL(request.url()).pathname === "/live/monitors") void held.then(() => request.continue());
      else void request.continue();
    });
    await page.goto(`${stack.web.httpUrl}/monitors`);
    expect(await page.$$eval("tr[data-monitor]", (rows) => rows.map((tr) => tr.getAttribute("data-monitor")).sort())).toEqual([gone, kept].sort());
    await page.evaluate(() => (window.sameLoad = true));
    await unary(scraper.deleteMonitor.bind(scraper), { id: gone }, { token });
    release();
    await page.waitForFunction((id: string) => !document.querySelector(`tr[data-monitor="${id}"]`), { timeout: WAIT_MS }, gone);
    expect(await page.$$eval("tr[data-monitor]", (rows) => rows.map((tr) => tr.getAttribute("data-monitor")))).toEqual([kept]);
    expect(await page.evaluate(() => window.sameLoad)).toBe(true);
    expect(await text(page, "[data-live-status]")).toBe("Deleted elsewhere.");

    // A set listed before this page added a monitor does not take that monitor off: another tab
    // whose stream answers late with a set that has neither the deleted monitor nor the new one.
    const late = await context.newPage();
    let answer: () => void = () => {};
    const answered = new Promise<void>((resolve) => (answer = resolve));
    await late.setRequestInterception(true);
    let streams = 0;
    late.on("request", (request) => {
      if (new URL(request.url()).pathname !== "/live/monitors") return void request.continue();
      // The first connection gets the stale set; reconnections go to the dashboard.
      if (streams++ > 0) return void request.continue();
      void answered.then(() =>
        request.respond({ status: 200, contentType: "text/event-stream", body: `retry: 60000\nevent: present\ndata: ${JSON.stringify({ kind: "monitor", ids: [] })}\n\n` }),
      );
    });
    await late.goto(`${stack.web.httpUrl}/monitors`);
    await late.type("#monitor-url", `${registrar.url}/pages/hal`);
    await late.type("#monitor-course_code", "CMPUT 301");
    await late.type("#monitor-section", "LEC B1");
    await late.click("form[data-action=create] button[type=submit]");
    await late.waitForFunction(() => document.querySelectorAll("tr[data-monitor]").length === 2, { timeout: WAIT_MS });
    const added = await late.$eval("#monitor-rows tr:first-child", (tr) => tr.getAttribute("data-monitor")!);
    answer();
    await late.waitForFunction((id: string) => !document.querySelector(`tr[data-monitor="${id}"]`), { timeout: WAIT_MS }, kept);
    expect(await late.$$eval("tr[data-monitor]", (rows) => rows.map((tr) => tr.getAttribute("data-monitor")))).toEqual([added]);
  } finally {
    scraper.close();
    await context.close();
  }
}, 60_000);

test("upload a PDF by drag and drop: the bar reaches 100 and the outline appears", async () => {
  const { context, page } = await signIn("ulla", ["student"]);
  await page.goto(`${stack.web.httpUrl}/uploads`);
  await page.type("#upload-course_title", "CMPUT 201 notes");
  const { bytes } = await coursePdf();
  await page.evaluate((base64: string) => {
    const binary = atob(base64);
    const data = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) data[i] = binary.charCodeAt(i);
    const transfer = new DataTransfer();
    transfer.items.add(new File([data], "cmput201.pdf", { type: "application/pdf" }));
    document.querySelector("[data-dropzone]")!.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
  }, Buffer.from(bytes).toString("base64"));
  expect(await page.$eval("#upload-files", (el) => (el as any).files?.[0]?.name)).toBe("cmput201.pdf");
  // Progress seen on the page, as the live stream moved it.
  await page.evaluate(() => {
    const seen: number[] = [];
    window.progressSeen = seen;
    new MutationObserver(() => {
      const bar = document.querySelector("[data-job] progress");
      if (bar && seen.at(-1) !== bar.value) seen.push(bar.value);
    }).observe(document.getElementById("job-list")!, { childList: true, subtree: true, attributes: true });
  });
  await page.click("form[data-upload] button[type=submit]");
  await page.waitForSelector("[data-job][data-status=COMPLETED] [data-outline]", { timeout: 60_000 });
  expect(await page.$eval("[data-job] progress", (el) => (el as any).value)).toBe(100);
  const seen = await page.evaluate(() => window.progressSeen as number[]);
  expect(seen.at(-1)).toBe(100);
  expect([...seen].sort((a, b) => a - b)).toEqual(seen);
  const modules = await page.$$eval("[data-outline] li", (items) => items.map((li) => li.textContent ?? ""));
  expect(modules.length).toBeGreaterThan(1);
  expect(modules.every((m) => /pages \d+–\d+/.test(m))).toBe(true);
  await shot(page, "uploads");

  // A file that is not a PDF gets ingest's own message next to the file field.
  await page.type("#upload-course_title", "Not a PDF");
  const input = await page.$("#upload-files");
  const notPdf = join(profile, "notes.txt");
  await Bun.write(notPdf, "plain text, not a PDF\n".repeat(10));
  await (input as unknown as { uploadFile(path: string): Promise<void> }).uploadFile(notPdf);
  await page.click("form[data-upload] button[type=submit]");
  await page.waitForFunction(() => (document.querySelector("#upload-files-error")?.textContent ?? "") !== "", { timeout: WAIT_MS });
  expect(await text(page, "#upload-files-error")).toContain("not a PDF");

  // Too large: refused before ingest gets it all, the limit named next to the file field.
  const big = join(profile, "big.pdf");
  await Bun.write(big, new Uint8Array(3 * 1024 * 1024).fill(32));
  await page.$eval("#upload-files-error", (el) => (el.textContent = ""));
  await (input as unknown as { uploadFile(path: string): Promise<void> }).uploadFile(big);
  await page.type("#upload-course_title", "Too big");
  await page.click("form[data-upload] button[type=submit]");
  await page.waitForFunction(() => (document.querySelector("#upload-files-error")?.textContent ?? "") !== "", { timeout: WAIT_MS });
  expect(await text(page, "#upload-files-error")).toContain("larger than 2 MiB");
  expect(await page.$$("[data-job]")).toHaveLength(1);
  await context.close();
}, 90_000);

test("cancel a running upload; retry a failed one", async () => {
  const { context, page } = await signIn("cora", ["student"]);
  await page.goto(`${stack.web.httpUrl}/uploads`);
  const input = (await page.$("#upload-files")) as unknown as { uploadFile(path: string): Promise<void> };

  // A long PDF: cancel it while it runs.
  const long = join(profile, "long.pdf");
  await Bun.write(long, await longCoursePdf(400, "bold"));
  await page.type("#upload-course_title", "Long notes");
  await input.uploadFile(long);
  await page.click("form[data-upload] button[type=submit]");
  await page.waitForSelector("[data-job][data-status=PROCESSING] form[data-action=cancel]", { timeout: WAIT_MS });
  await page.click("[data-job][data-status=PROCESSING] form[data-action=cancel] button");
  await page.waitForSelector("[data-job][data-status=CANCELLED]", { timeout: WAIT_MS });
  // A cancelled job is not retryable (ingest retries FAILED jobs only), so none is offered.
  expect(await page.$("[data-job][data-status=CANCELLED] form[data-action=retry]")).toBeNull();

  // A corrupt PDF is accepted, then fails with a reason a person understands; Retry queues it again.
  const corrupt = join(profile, "corrupt.pdf");
  await Bun.write(corrupt, corruptPdf());
  await page.type("#upload-course_title", "Damaged notes");
  await input.uploadFile(corrupt);
  await page.click("form[data-upload] button[type=submit]");
  await page.waitForSelector("[data-job][data-status=FAILED] form[data-action=retry]", { timeout: WAIT_MS });
  expect(await text(page, "[data-job][data-status=FAILED] .error")).not.toBe("");
  await page.evaluate(() => {
    const seen: string[] = [];
    window.statusesSeen = seen;
    new MutationObserver(() => {
      const status = document.querySelector("[data-job][data-status] h3")?.closest("[data-job]")?.getAttribute("data-status");
      if (status && seen.at(-1) !== status) seen.push(status);
    }).observe(document.getElementById("job-list"), { childList: true, subtree: true, attributes: true });
  });
  await page.click("[data-job][data-status=FAILED] form[data-action=retry] button");
  await page.waitForFunction(() => window.statusesSeen.includes("PENDING") && window.statusesSeen.at(-1) === "FAILED", { timeout: WAIT_MS });
  await shot(page, "uploads-cancel-retry");
  await context.close();
}, 90_000);

test("a registrar's course counts and a student's decision, waitlist position and promotion arrive live", async () => {
  const registrarSession = await signIn("rita", ["registrar"]);
  const courses = registrarSession.page;
  await courses.goto(`${stack.web.httpUrl}/courses`);
  await courses.type("#course-code", "WEB 101");
  await courses.type("#course-title", "Dashboards");
  await courses.type("#course-capacity", "1");
  await courses.click("form[data-action=create] button[type=submit]");
  await courses.waitForSelector("tr[data-course]", { timeout: WAIT_MS });
  const courseId = await courses.$eval("tr[data-course]", (el) => el.getAttribute("data-course")!);

  // Someone else asks first (decisions are paused, so the request waits).
  const allocator = createClient(EnrollmentServiceClient, stack.services.allocator!.grpcAddress, { caller: "test" });
  await unary(allocator.enroll.bind(allocator), { idempotencyKey: "first", studentId: "fay", courseId, priority: 0, wait: false }, { token: await testToken("rita", ["registrar"]) });
  allocator.close();
  await courses.waitForFunction(() => document.querySelector("tr[data-course] [data-pending]")?.textContent === "1", { timeout: WAIT_MS });
  await shot(courses, "courses");

  const { context, page } = await signIn("sam", ["student"]);
  await page.goto(`${stack.web.httpUrl}/enrollment`);
  await page.select("#enroll-course_id", courseId);
  await page.click("form[data-action=enroll] button[type=submit]");
  await page.waitForSelector("[data-request][data-status=PENDING]", { timeout: WAIT_MS });
  await page.evaluate(() => (window.sameLoad = true));

  // Decisions resume: fay has the seat, sam is first on the waitlist; both pages follow.
  stack.services.allocator!.process.kill("SIGUSR2");
  await page.waitForSelector("[data-request][data-status=WAITLISTED]", { timeout: WAIT_MS });
  expect(await text(page, "[data-request-detail]")).toBe("Waitlist position 1");
  expect(await page.evaluate(() => window.sameLoad)).toBe(true);
  await shot(page, "enrollment");
  await courses.waitForFunction(
    () => document.querySelector("tr[data-course] [data-seats-taken]")?.textContent === "1 / 1" && document.querySelector("tr[data-course] [data-waitlist]")?.textContent === "1",
    { timeout: WAIT_MS },
  );

  // The registrar raises the capacity: sam is promoted from the waitlist, and sees it arrive.
  await courses.$eval(`#capacity-${courseId}`, (el) => ((el as any).value = ""));
  await courses.type(`#capacity-${courseId}`, "2");
  await courses.click("form[data-action=capacity] button");
  await courses.waitForFunction(() => document.querySelector("tr[data-course] [data-seats-taken]")?.textContent === "2 / 2", { timeout: WAIT_MS });
  await page.waitForSelector("[data-request][data-status=ENROLLED]", { timeout: WAIT_MS });
  expect(await page.evaluate(() => window.sameLoad)).toBe(true);
  await context.close();

  // Another browser (a fresh context, nothing remembered) lists sam's request as the allocator has it.
  const elsewhere = await signIn("sam", ["student"]);
  await elsewhere.page.goto(`${stack.web.httpUrl}/enrollment`);
  expect(await elsewhere.page.$$eval("#request-list [data-request]", (items) => items.map((li) => li.getAttribute("data-status")))).toEqual(["ENROLLED"]);
  await elsewhere.context.close();

  // The course's page: gus waits first in line; when sam drops (from anywhere), gus gets the seat on the open page.
  const grpcClient = createClient(EnrollmentServiceClient, stack.services.allocator!.grpcAddress, { caller: "test" });
  for (const student of ["gus", "hal", "ian"]) {
    await unary(grpcClient.enroll.bind(grpcClient), { idempotencyKey: student, studentId: student, courseId, priority: 0, wait: true }, { token: await testToken(student, ["student"]) });
  }
  await Promise.all([courses.waitForNavigation(), courses.click(`#course-${courseId} a[data-course-link]`)]);
  expect(await courses.$$eval("[data-enrolled]", (rows) => rows.map((tr) => tr.getAttribute("data-enrolled")))).toEqual(["fay", "sam"]);
  expect(await courses.$$eval("[data-waitlisted]", (rows) => rows.map((tr) => `${tr.querySelector("[data-position]").textContent} ${tr.getAttribute("data-waitlisted")}`))).toEqual([
    "1 gus",
    "2 hal",
    "3 ian",
  ]);
  await courses.evaluate(() => (window.sameLoad = true));
  // The keyboard focus is on ian's Drop button; the live update must leave it there, not on the first Drop.
  await courses.focus('button[aria-label="Drop ian"]');
  await unary(grpcClient.drop.bind(grpcClient), { studentId: "sam", courseId, idempotencyKey: "sam-drops" }, { token: await testToken("sam", ["student"]) });
  grpcClient.close();
  await courses.waitForFunction(
    () => [...document.querySelectorAll("[data-enrolled]")].map((tr: any) => tr.getAttribute("data-enrolled")).join() === "fay,gus" && document.querySelectorAll("[data-waitlisted]").length === 2,
    { timeout: WAIT_MS },
  );
  expect(await courses.evaluate(() => window.sameLoad)).toBe(true);
  expect(await courses.evaluate(() => document.activeElement?.getAttribute("aria-label"))).toBe("Drop ian");
  expect(await text(courses, "[data-seats-taken]")).toBe("2");
  await shot(courses, "course");
  await registrarSession.context.close();
}, 90_000);

test("a signed-out browser and a forged cookie get the sign-in page, never data", async () => {
  const { context, page } = await signIn("erin", ["student"], "erin@example.edu");
  await page.goto(`${stack.web.httpUrl}/monitors`);
  expect(await page.$("#monitor-rows")).not.toBeNull();
  await Promise.all([page.waitForNavigation(), page.click(".signout button")]);
  expect(new URL(page.url()).pathname).toBe("/signin");
  await page.goto(`${stack.web.httpUrl}/monitors`);
  expect(new URL(page.url()).pathname).toBe("/signin");

  await page.setCookie({ name: "cm_session", value: `${await testToken("erin", ["student"])}x`, url: stack.web.httpUrl });
  await page.goto(`${stack.web.httpUrl}/monitors`);
  expect(new URL(page.url()).pathname).toBe("/signin");
  expect(await page.$("#monitor-rows")).toBeNull();
  await eventually(async () => (await page.cookies()).every((c) => c.name !== "cm_session"), 5000, "the forged cookie to be cleared");
  await context.close();
}, 60_000);
