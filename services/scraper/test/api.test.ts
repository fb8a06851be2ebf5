// MonitorService end to end: a real scraper process, Chromium, Postgres and NATS JetStream, against
// the demo registrar on 127.0.0.1. Asserts what a user checks: the seats, the events, the history,
// who sees what, and the error a bad request gets.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as grpc from "@grpc/grpc-js";
import { FetchMode, Isolation, MonitorHealth, MonitorMode, type Monitor, type WatchMonitorsResponse } from "@coursemesh/proto/coursemesh/scraper/v1/scraper";
import { bearer } from "@coursemesh/shared/grpc/client.ts";
import { decodeGrpcError } from "@coursemesh/shared/grpc/errors.ts";
import type { ServiceProcess } from "@coursemesh/shared/testing/harness.ts";
import { testToken } from "@coursemesh/shared/testing/harness.ts";
import { beartracks, call, eventually, monitorClient, scraperEnv, watchStream, type ScraperEnv } from "./support.ts";

let env: ScraperEnv;
let scraper: ServiceProcess;
let client: ReturnType<typeof monitorClient>;
let alice: string;
let bob: string;
let operator: string;

beforeAll(async () => {
  env = await scraperEnv();
  scraper = await env.startScraper();
  client = monitorClient(scraper.grpcAddress);
  [alice, bob, operator] = await Promise.all([testToken("alice", ["student"]), testToken("bob", ["student"]), testToken("ops", ["operator"])]);
});

afterAll(async () => {
  if (process.env.DEBUG_SCRAPER) console.log(JSON.stringify(scraper.logs.slice(-15), null, 1), scraper.process.exitCode);
  client?.close();
  await env?.close();
});

const page = (name: string) => `${env.registrar.url}/pages/${name}`;

async function create(name: string, overrides: Record<string, unknown> = {}, token = alice): Promise<Monitor> {
  const response = await call(
    client,
    "createMonitor",
    { url: page(name), label: "CMPUT 201 LEC A1", intervalSeconds: 1, notifyEmails: [], extractor: beartracks(), fetchMode: FetchMode.FETCH_MODE_BROWSER, isolation: Isolation.ISOLATION_HOST, ...overrides },
    token,
  );
  return response.monitor!;
}

async function get(id: string, token = alice): Promise<Monitor> {
  return (await call(client, "getMonitor", { id }, token)).monitor!;
}

async function failure(promise: Promise<unknown>) {
  try {
    await promise;
  } catch (error) {
    return decodeGrpcError(error);
  }
  throw new Error("the call succeeded");
}

describe("watching seats", () => {
  test("a change is detected, recorded in the history and published as seats.changed with the right payload", async () => {
    const monitor = await create("change");
    expect(monitor.mode).toBe(MonitorMode.MONITOR_MODE_ACTIVE);
    expect(monitor.health).toBe(MonitorHealth.MONITOR_HEALTH_PENDING);
    expect(monitor.seats).toBeUndefined();

    const first = await env.waitForEvent((e) => e.subject === `seats.changed.${monitor.id}`);
    expect(first.data.previous).toBeUndefined();
    expect(first.data.current).toEqual({ open: 0, waitlist: 4, raw: "Full, Waitlist: 4" });
    const healthy = await eventually(async () => {
      const m = await get(monitor.id);
      return m.health === MonitorHealth.MONITOR_HEALTH_HEALTHY ? m : undefined;
    });
    expect(healthy.seats).toEqual({ open: 0, capacity: undefined, waitlist: 4, raw: "Full, Waitlist: 4", parseError: "" });

    env.registrar.setSeats("change", "CMPUT 201", "LEC A1", { open: 3, capacity: 30, waitlist: 0 });
    const event = await env.waitForEvent((e) => e.subject === `seats.changed.${monitor.id}` && e.data.current?.open === 3);
    expect(event.data).toMatchObject({
      monitorId: monitor.id,
      label: "CMPUT 201 LEC A1",
      url: page("change"),
      previous: { open: 0, waitlist: 4, raw: "Full, Waitlist: 4" },
      current: { open: 3, capacity: 30, raw: "3 of 30 seats open" },
    });
    expect(event.data.aggregateVersion).toBeGreaterThan(first.data.aggregateVersion);
    expect(event.headers["Nats-Msg-Id"]).toBe(event.data.eventId);
    expect(event.headers["Coursemesh-Event"]).toBe("coursemesh.events.v1.SeatsChanged");
    expect(Date.parse(event.data.observedAt)).toBeGreaterThan(Date.parse(first.data.observedAt));

    const history = await call(client, "listSeatChanges", { monitorId: monitor.id, pageSize: 1, pageToken: "" }, alice);
    expect(history.seatChanges).toHaveLength(1);
    expect(history.seatChanges[0]!.id).toBe(event.data.seatChangeId);
    // The change names the event it produced, which the notifier's notifications of it carry too.
    expect(history.seatChanges[0]!.eventId).toBe(event.data.eventId);
    expect(history.seatChanges[0]!.current).toMatchObject({ open: 3, capacity: 30 });
    const older = await call(client, "listSeatChanges", { monitorId: monitor.id, pageSize: 1, pageToken: history.nextPageToken }, alice);
    expect(older.seatChanges.map((c) => [c.id, c.eventId])).toEqual([[first.data.seatChangeId, first.data.eventId]]);
    expect(older.seatChanges[0]!.previous).toBeUndefined();
    expect(older.nextPageToken).toBe("");

    const after = await get(monitor.id);
    expect(after.lastChangedAt?.toISOString()).toBe(new Date(event.data.observedAt).toISOString());
    expect(after.seats).toMatchObject({ open: 3, capacity: 30 });
  });

  test("pause stops checks, resume restarts them, stop ends them for good but keeps the history", async () => {
    const monitor = await create("pause");
    await env.waitForEvent((e) => e.subject === `seats.changed.${monitor.id}`);
    const paused = (await call(client, "pauseMonitor", { id: monitor.id }, alice)).monitor!;
    expect(paused.mode).toBe(MonitorMode.MONITOR_MODE_PAUSED);
    expect(paused.nextCheckAt).toBeUndefined();
    expect(paused.health).toBe(MonitorHealth.MONITOR_HEALTH_HEALTHY);
    // Pausing twice is a no-op.
    expect((await call(client, "pauseMonitor", { id: monitor.id }, alice)).monitor!.mode).toBe(MonitorMode.MONITOR_MODE_PAUSED);
    await Bun.sleep(500); // a check already in flight may finish
    const hitsWhilePaused = env.registrar.hits("pause").length;
    await Bun.sleep(2500);
    expect(env.registrar.hits("pause").length).toBe(hitsWhilePaused);

    const resumed = (await call(client, "resumeMonitor", { id: monitor.id }, alice)).monitor!;
    expect(resumed.mode).toBe(MonitorMode.MONITOR_MODE_ACTIVE);
    await eventually(async () => (env.registrar.hits("pause").length >= hitsWhilePaused + 2 ? true : undefined), 10_000, "checks after resume");

    const stopped = (await call(client, "stopMonitor", { id: monitor.id }, alice)).monitor!;
    expect(stopped.mode).toBe(MonitorMode.MONITOR_MODE_STOPPED);
    for (const method of ["resumeMonitor", "pauseMonitor", "checkNow"] as const) {
      const error = await failure(call(client, method, { id: monitor.id }, alice));
      expect(error.code).toBe(grpc.status.FAILED_PRECONDITION);
      expect(error.reason).toBe("MONITOR_STOPPED");
    }
    await Bun.sleep(500);
    const hitsWhenStopped = env.registrar.hits("pause").length;
    await Bun.sleep(2000);
    expect(env.registrar.hits("pause").length).toBe(hitsWhenStopped);
    const history = await call(client, "listSeatChanges", { monitorId: monitor.id, pageSize: 0, pageToken: "" }, alice);
    expect(history.seatChanges.length).toBeGreaterThanOrEqual(1);
    expect((await get(monitor.id)).mode).toBe(MonitorMode.MONITOR_MODE_STOPPED);
  });

  test("CheckNow answers with the monitor after a check, also when paused", async () => {
    const monitor = await create("checknow", { intervalSeconds: 3600 });
    const first = await call(client, "checkNow", { id: monitor.id }, alice);
    expect(first.monitor!.health).toBe(MonitorHealth.MONITOR_HEALTH_HEALTHY);
    await call(client, "pauseMonitor", { id: monitor.id }, alice);
    env.registrar.setSeats("checknow", "CMPUT 201", "LEC A1", { open: 1, capacity: 30, waitlist: 0 });
    const checked = await call(client, "checkNow", { id: monitor.id }, alice);
    expect(checked.changed).toBe(true);
    expect(checked.monitor!.seats).toMatchObject({ open: 1, capacity: 30, raw: "1 of 30 seats open" });
    expect(checked.monitor!.mode).toBe(MonitorMode.MONITOR_MODE_PAUSED);
    const again = await call(client, "checkNow", { id: monitor.id }, alice);
    expect(again.changed).toBe(false);
  });

  test("HTTP mode (server-rendered HTML and JSON), css and json extractors, and an isolated context", async () => {
    const html = await create("httpmode", {
      url: `${page("httpmode")}?render=server`,
      fetchMode: FetchMode.FETCH_MODE_HTTP,
      extractor: { kind: { $case: "css", value: { containerSelector: ".course_box:nth-of-type(2)", seatsSelector: ".seatText", pattern: "" } } },
      intervalSeconds: 3600,
    });
    expect((await call(client, "checkNow", { id: html.id }, alice)).monitor!.seats).toMatchObject({ open: 12, capacity: 120 });
    const json = await create("jsonmode", {
      url: `${env.registrar.url}/api/pages/jsonmode`,
      fetchMode: FetchMode.FETCH_MODE_HTTP,
      extractor: { kind: { $case: "json", value: { path: "courses[0].sections[1].seats" } } },
      intervalSeconds: 3600,
    });
    expect((await call(client, "checkNow", { id: json.id }, alice)).monitor!.seats).toMatchObject({ open: 7, capacity: 30, waitlist: 0 });
    const isolated = await create("isolated", { isolation: Isolation.ISOLATION_MONITOR, intervalSeconds: 3600, extractor: beartracks("CMPUT 201", "LAB D01") });
    const checked = (await call(client, "checkNow", { id: isolated.id }, alice)).monitor!;
    expect(checked.isolation).toBe(Isolation.ISOLATION_MONITOR);
    expect(checked.seats).toMatchObject({ open: 2, capacity: 24 });
  });

  test("unknown seat text keeps the raw value and says it could not parse", async () => {
    env.registrar.setSeats("tba", "CMPUT 201", "LEC A1", { text: "TBA — ask the department" });
    const monitor = await create("tba", { intervalSeconds: 3600 });
    const checked = (await call(client, "checkNow", { id: monitor.id }, alice)).monitor!;
    expect(checked.health).toBe(MonitorHealth.MONITOR_HEALTH_HEALTHY);
    expect(checked.seats).toEqual({ open: undefined, capacity: undefined, waitlist: undefined, raw: "TBA — ask the department", parseError: 'could not parse seat text "TBA — ask the department"; showing it as found' });
  });
});

describe("WatchMonitors", () => {
  test("sends the current state first, then each update with its seat change", async () => {
    const monitor = await create("watch", { intervalSeconds: 1 });
    await env.waitForEvent((e) => e.subject === `seats.changed.${monitor.id}`);
    const received: WatchMonitorsResponse[] = [];
    const stream = client.watchMonitors({ ids: [monitor.id] }, bearer(alice));
    stream.on("data", (message: WatchMonitorsResponse) => received.push(message));
    stream.on("error", () => {});
    try {
      await eventually(async () => (received.length >= 1 ? true : undefined), 5000, "the current state");
      expect(received[0]!.monitor!.id).toBe(monitor.id);
      expect(received[0]!.monitor!.seats).toMatchObject({ open: 0, waitlist: 4 });
      env.registrar.setSeats("watch", "CMPUT 201", "LEC A1", { open: 5, capacity: 30, waitlist: 0 });
      const update = await eventually(async () => received.find((r) => r.change?.current?.open === 5), 10_000, "the change");
      expect(update.change!.previous).toMatchObject({ open: 0, waitlist: 4 });
      expect(update.monitor!.seats).toMatchObject({ open: 5 });
      await call(client, "pauseMonitor", { id: monitor.id }, alice);
      await eventually(async () => received.find((r) => r.monitor?.mode === MonitorMode.MONITOR_MODE_PAUSED), 5000, "the pause");
    } finally {
      stream.cancel();
    }
  });

  test("a deletion reaches every stream that had sent the monitor, once, and no other", async () => {
    const monitor = await create("watch-delete", { intervalSeconds: 3600 });
    const kept = await create("watch-kept", { intervalSeconds: 3600 });
    const everything = watchStream(client, [], alice);
    const justIt = watchStream(client, [monitor.id], alice);
    const operators = watchStream(client, [], operator);
    const bobs = watchStream(client, [], bob);
    const streams = [everything, justIt, operators];
    try {
      await eventually(async () => (streams.every((s) => s.received.some((r) => r.monitor?.id === monitor.id)) ? true : undefined), 5000, "the current states");
      await call(client, "deleteMonitor", { id: monitor.id }, alice);
      for (const stream of streams) {
        const deletion = await eventually(async () => stream.received.find((r) => r.deletedMonitorId === monitor.id), 5000, "the deletion");
        expect(deletion.monitor).toBeUndefined();
      }
      // A later update of another monitor still flows, and the deletion was said once.
      await call(client, "pauseMonitor", { id: kept.id }, alice);
      await eventually(async () => everything.received.find((r) => r.monitor?.id === kept.id && r.monitor.mode === MonitorMode.MONITOR_MODE_PAUSED), 5000, "the pause");
      expect(everything.received.filter((r) => r.deletedMonitorId === monitor.id)).toHaveLength(1);
      // Bob never saw alice's monitor, so he hears nothing of its deletion.
      expect(bobs.received.filter((r) => r.deletedMonitorId !== "" || r.monitor?.owner === "alice")).toEqual([]);
    } finally {
      for (const stream of [...streams, bobs]) stream.cancel();
    }
  });

  test("an id the caller cannot see is NOT_FOUND", async () => {
    const monitor = await create("watch-other", { intervalSeconds: 3600 });
    const stream = client.watchMonitors({ ids: [monitor.id] }, bearer(bob));
    const error = await new Promise<unknown>((resolve) => {
      stream.on("error", resolve);
      stream.on("data", () => {});
    });
    expect(decodeGrpcError(error)).toMatchObject({ code: grpc.status.NOT_FOUND, reason: "MONITOR_NOT_FOUND" });
  });
});

describe("who may do what", () => {
  test("monitors belong to their creator; operators see all; no token is UNAUTHENTICATED", async () => {
    const monitor = await create("owned", { intervalSeconds: 3600 });
    expect(monitor.owner).toBe("alice");
    for (const [method, request] of [
      ["getMonitor", { id: monitor.id }],
      ["pauseMonitor", { id: monitor.id }],
      ["deleteMonitor", { id: monitor.id }],
      ["checkNow", { id: monitor.id }],
      ["listSeatChanges", { monitorId: monitor.id, pageSize: 0, pageToken: "" }],
    ] as const) {
      const error = await failure(call(client, method, request as never, bob));
      expect([method, error.code, error.reason]).toEqual([method, grpc.status.NOT_FOUND, "MONITOR_NOT_FOUND"]);
    }
    const bobs = await call(client, "listMonitors", { mode: 0, pageSize: 0, pageToken: "" }, bob);
    expect(bobs.monitors.map((m) => m.id)).not.toContain(monitor.id);
    expect((await get(monitor.id, operator)).owner).toBe("alice");
    const all = await call(client, "listMonitors", { mode: 0, pageSize: 1000, pageToken: "" }, operator);
    expect(all.monitors.map((m) => m.id)).toContain(monitor.id);
    const anonymous = await failure(call(client, "getMonitor", { id: monitor.id }));
    expect(anonymous).toMatchObject({ code: grpc.status.UNAUTHENTICATED, reason: "TOKEN_MISSING" });
  });

  test("ListMonitors pages newest first and filters by mode", async () => {
    const carol = await testToken("carol", ["student"]);
    const ids: string[] = [];
    for (const name of ["list-a", "list-b", "list-c"]) ids.push((await create(name, { intervalSeconds: 3600 }, carol)).id);
    await call(client, "pauseMonitor", { id: ids[1]! }, carol);
    const first = await call(client, "listMonitors", { mode: 0, pageSize: 2, pageToken: "" }, carol);
    expect(first.monitors.map((m) => m.id)).toEqual([ids[2]!, ids[1]!]);
    const second = await call(client, "listMonitors", { mode: 0, pageSize: 2, pageToken: first.nextPageToken }, carol);
    expect(second.monitors.map((m) => m.id)).toEqual([ids[0]!]);
    expect(second.nextPageToken).toBe("");
    const paused = await call(client, "listMonitors", { mode: MonitorMode.MONITOR_MODE_PAUSED, pageSize: 0, pageToken: "" }, carol);
    expect(paused.monitors.map((m) => m.id)).toEqual([ids[1]!]);
    // A token from another query is refused rather than paging something else.
    const wrong = await failure(call(client, "listMonitors", { mode: MonitorMode.MONITOR_MODE_ACTIVE, pageSize: 2, pageToken: first.nextPageToken }, carol));
    expect(wrong).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, reason: "INVALID_PAGE_TOKEN" });
  });

  test("DeleteMonitor removes the monitor and its history", async () => {
    const monitor = await create("deleted", { intervalSeconds: 3600 });
    await call(client, "checkNow", { id: monitor.id }, alice);
    await call(client, "deleteMonitor", { id: monitor.id }, alice);
    expect(await failure(get(monitor.id))).toMatchObject({ code: grpc.status.NOT_FOUND, reason: "MONITOR_NOT_FOUND" });
    expect(await failure(call(client, "listSeatChanges", { monitorId: monitor.id, pageSize: 0, pageToken: "" }, alice))).toMatchObject({ code: grpc.status.NOT_FOUND });
    expect(await failure(call(client, "deleteMonitor", { id: monitor.id }, alice))).toMatchObject({ code: grpc.status.NOT_FOUND });
  });
});

describe("bad input", () => {
  test("each bad request gets INVALID_ARGUMENT with its reason and the field, and creates nothing", async () => {
    const dave = await testToken("dave", ["student"]);
    const good = { url: page("bad"), label: "CMPUT 201 LEC A1", intervalSeconds: 60, notifyEmails: [] as string[], extractor: beartracks(), fetchMode: 0, isolation: 0 };
    const cases: [Record<string, unknown>, string, string][] = [
      [{ url: "not a url" }, "URL_INVALID", "url"],
      [{ url: "ftp://example.edu/classes" }, "URL_INVALID", "url"],
      [{ url: "javascript:alert(1)" }, "URL_INVALID", "url"],
      [{ label: "" }, "LABEL_REQUIRED", "label"],
      [{ intervalSeconds: -5 }, "INTERVAL_TOO_SHORT", "interval_seconds"],
      [{ extractor: undefined }, "EXTRACTOR_REQUIRED", "extractor"],
      [{ extractor: { kind: { $case: "beartracks", value: { courseCode: "", sectionLabel: "LEC A1" } } } }, "EXTRACTOR_INVALID", "extractor.beartracks.course_code"],
      [{ extractor: { kind: { $case: "css", value: { containerSelector: "div[[", seatsSelector: "", pattern: "" } } } }, "EXTRACTOR_INVALID", "extractor.css.container_selector"],
      [{ extractor: { kind: { $case: "css", value: { containerSelector: "div", seatsSelector: "", pattern: "(?<open>(\\d+)*)*" } } } }, "EXTRACTOR_INVALID", "extractor.css.pattern"],
      [{ extractor: { kind: { $case: "json", value: { path: "a..b" } } } }, "EXTRACTOR_INVALID", "extractor.json.path"],
      [{ notifyEmails: ["alice@example.edu", "nope"] }, "EMAIL_INVALID", "notify_emails[1]"],
      [{ fetchMode: 7 }, "EXTRACTOR_INVALID", "fetch_mode"],
    ];
    for (const [overrides, reason, field] of cases) {
      const error = await failure(call(client, "createMonitor", { ...good, ...overrides } as never, dave));
      expect([overrides, error.code, error.reason, error.fieldViolations.map((v) => v.field)]).toEqual([overrides, grpc.status.INVALID_ARGUMENT, reason, [field]]);
      expect(error.message.length).toBeGreaterThan(10);
    }
    for (const id of ["", "42", "not-a-uuid"]) {
      expect(await failure(call(client, "getMonitor", { id }, dave))).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, reason: "INVALID_ID" });
    }
    expect(await failure(call(client, "listMonitors", { mode: 0, pageSize: 0, pageToken: "garbage" }, dave))).toMatchObject({ reason: "INVALID_PAGE_TOKEN" });
    expect((await call(client, "listMonitors", { mode: 0, pageSize: 0, pageToken: "" }, dave)).monitors).toEqual([]);
  });

  test("notify_emails with the notifier unreachable is UNAVAILABLE and leaves nothing behind", async () => {
    const erin = await testToken("erin", ["student"], "erin@example.edu");
    const error = await failure(
      call(client, "createMonitor", { url: page("nonotifier"), label: "CMPUT 201 LEC A1", intervalSeconds: 60, notifyEmails: ["erin@example.edu"], extractor: beartracks(), fetchMode: 0, isolation: 0 }, erin),
    );
    expect(error).toMatchObject({ code: grpc.status.UNAVAILABLE, reason: "NOTIFIER_UNAVAILABLE" });
    expect(error.message).toContain("nothing was created");
    expect((await call(client, "listMonitors", { mode: 0, pageSize: 0, pageToken: "" }, erin)).monitors).toEqual([]);
  });
});

describe("restarts", () => {
  test("a killed scraper loses no monitor: the next process picks up the schedule and sees changes", async () => {
    const monitor = await create("restart", { intervalSeconds: 1 });
    await env.waitForEvent((e) => e.subject === `seats.changed.${monitor.id}`);
    await scraper.kill();
    client.close();
    scraper = await env.startScraper();
    client = monitorClient(scraper.grpcAddress);
    env.registrar.setSeats("restart", "CMPUT 201", "LEC A1", { open: 9, capacity: 30, waitlist: 0 });
    const event = await env.waitForEvent((e) => e.subject === `seats.changed.${monitor.id}` && e.data.current?.open === 9, 20_000);
    expect(event.data.previous).toMatchObject({ open: 0, waitlist: 4 });
    expect((await get(monitor.id)).seats).toMatchObject({ open: 9 });
  });
});
