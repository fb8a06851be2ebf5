// Monitor rules without I/O: health transitions, backoff, change detection, request validation, and
// the SSRF guard's decisions for the proxy (stub resolvers only: no connection is made).
import { describe, expect, test } from "bun:test";
import { decideDestination, type GuardPolicy } from "../src/guard-proxy.ts";
import { HostLimiter } from "../src/host-limiter.ts";
import { applyCheck, nextCheckDelaySeconds, validateNewMonitor, type CreateInput, type MonitorRecord } from "../src/monitors.ts";
import { parseSeatText } from "../src/seats.ts";

const monitor = (overrides: Partial<MonitorRecord> = {}): MonitorRecord => ({
  id: "0190f0c0-0000-7000-8000-000000000001",
  owner: "alice",
  url: "https://registrar.example.edu/classes",
  host: "registrar.example.edu",
  label: "CMPUT 201 LEC A1",
  intervalSeconds: 60,
  extractor: { kind: "beartracks", courseCode: "CMPUT 201", sectionLabel: "LEC A1" },
  fetchMode: "BROWSER",
  isolation: "HOST",
  mode: "ACTIVE",
  health: "PENDING",
  seats: null,
  lastCheckedAt: null,
  lastChangedAt: null,
  lastSuccessAt: null,
  lastError: "",
  consecutiveFailures: 0,
  nextCheckAt: new Date(),
  version: 1,
  subscriptionIds: [],
  traceparent: null,
  createdAt: new Date(),
  updatedAt: new Date(),
  ...overrides,
});
const settings = { errorAfterFailures: 3, maxBackoffSeconds: 3600 };
const at = new Date("2026-09-01T10:00:00Z");
const noJitter = () => 0;

describe("what a check does to a monitor", () => {
  test("the first reading makes it HEALTHY and is a change from nothing", () => {
    const effect = applyCheck(monitor(), { kind: "ok", seats: parseSeatText("Full"), observedAt: at }, settings, noJitter);
    expect(effect.health).toBe("HEALTHY");
    expect(effect.change).toEqual({ previous: null, current: parseSeatText("Full") });
    expect(effect.healthChange).toEqual({ previous: "PENDING", current: "HEALTHY" });
    expect(effect.version).toBe(3); // one per event: the seat change, then the health change
    expect(effect.nextCheckDelaySeconds).toBe(60);
  });

  test("the same seats again change nothing users care about", () => {
    const m = monitor({ health: "HEALTHY", seats: parseSeatText("Full"), version: 5 });
    const effect = applyCheck(m, { kind: "ok", seats: parseSeatText("Full"), observedAt: at }, settings, noJitter);
    expect(effect.change).toBeUndefined();
    expect(effect.healthChange).toBeUndefined();
    expect(effect.version).toBe(5);
  });

  test("failures keep the last reading and health until the Nth in a row, which is ERROR with the reason", () => {
    let m = monitor({ health: "HEALTHY", seats: parseSeatText("Full"), version: 2 });
    for (let i = 1; i <= 3; i++) {
      const effect = applyCheck(m, { kind: "failed", error: "no section 'LEC A1' under course 'CMPUT 201'", observedAt: at }, settings, noJitter);
      expect(effect.consecutiveFailures).toBe(i);
      expect(effect.seats).toEqual(parseSeatText("Full"));
      expect(effect.health).toBe(i < 3 ? "HEALTHY" : "ERROR");
      m = { ...m, ...effect, version: effect.version };
    }
    expect(m.lastError).toBe("no section 'LEC A1' under course 'CMPUT 201'");
    expect(m.version).toBe(3);
    const recovered = applyCheck(m, { kind: "ok", seats: parseSeatText("Full"), observedAt: at }, settings, noJitter);
    expect(recovered).toMatchObject({ health: "HEALTHY", lastError: "", consecutiveFailures: 0, healthChange: { previous: "ERROR", current: "HEALTHY" } });
  });

  test("backoff doubles per failure, is capped, and jitter only ever adds time", () => {
    expect([0, 1, 2, 3, 4].map((f) => nextCheckDelaySeconds(60, f, 3600, noJitter))).toEqual([60, 60, 120, 240, 480]);
    expect(nextCheckDelaySeconds(60, 30, 3600, noJitter)).toBe(3600);
    for (let i = 0; i < 100; i++) {
      const delay = nextCheckDelaySeconds(60, 0, 3600);
      expect(delay).toBeGreaterThanOrEqual(60);
      expect(delay).toBeLessThanOrEqual(66);
    }
  });
});

describe("CreateMonitor validation", () => {
  const base: CreateInput = {
    url: "https://registrar.example.edu/classes?term=1890",
    label: "CMPUT 201 LEC A1",
    intervalSeconds: 0,
    notifyEmails: ["Alice@Example.edu"],
    extractor: { $case: "beartracks", value: { courseCode: "CMPUT 201", sectionLabel: "LEC A1" } },
    fetchMode: "BROWSER",
    isolation: "HOST",
  };
  const schedule = { minIntervalSeconds: 30, defaultIntervalSeconds: 300, errorAfterFailures: 3, maxBackoffSeconds: 3600 };
  const reasonOf = (input: Partial<CreateInput>) => {
    try {
      validateNewMonitor({ ...base, ...input }, schedule);
      return "OK";
    } catch (error) {
      const e = error as { reason: string };
      return e.reason;
    }
  };

  test("a good request gets the default interval, a normalised URL and host, and lowercased unique emails", () => {
    const valid = validateNewMonitor({ ...base, notifyEmails: ["Alice@Example.edu", "alice@example.edu"] }, schedule);
    expect(valid).toMatchObject({ host: "registrar.example.edu", intervalSeconds: 300, notifyEmails: ["alice@example.edu"] });
  });

  test("each bad field has its reason", () => {
    expect(reasonOf({ url: "not a url" })).toBe("URL_INVALID");
    expect(reasonOf({ url: "ftp://registrar.example.edu/x" })).toBe("URL_INVALID");
    expect(reasonOf({ url: "https://user:pw@registrar.example.edu/" })).toBe("URL_INVALID");
    expect(reasonOf({ label: "  " })).toBe("LABEL_REQUIRED");
    expect(reasonOf({ intervalSeconds: 5 })).toBe("INTERVAL_TOO_SHORT");
    expect(reasonOf({ extractor: undefined })).toBe("EXTRACTOR_REQUIRED");
    expect(reasonOf({ extractor: { $case: "css", value: { containerSelector: ">>>", seatsSelector: "", pattern: "" } } })).toBe("EXTRACTOR_INVALID");
    expect(reasonOf({ notifyEmails: ["alice@example.edu", "not-an-email"] })).toBe("EMAIL_INVALID");
  });
});

describe("the SSRF guard's decisions (stub resolver, no connection)", () => {
  const resolvesTo = (...addresses: string[]) => async () => addresses;
  const policy = (overrides: Partial<GuardPolicy> = {}): GuardPolicy => ({ allowPrivate: false, allowedHosts: [], resolve: resolvesTo("93.184.215.14"), ...overrides });

  test("public names pass and the proxy connects to the address it checked", async () => {
    expect(await decideDestination("registrar.example.edu", 443, policy())).toEqual({ allowed: true, address: "93.184.215.14" });
  });

  test("names resolving to private, loopback, link-local, metadata or IPv4-mapped addresses are refused", async () => {
    for (const address of ["10.1.2.3", "172.16.0.9", "192.168.1.20", "127.0.0.1", "127.42.0.7", "169.254.169.254", "fe80::1", "fc00::1", "fd12::2", "::ffff:127.0.0.1", "::1", "0.0.0.0"]) {
      const decision = await decideDestination("rebind.attacker.test", 80, policy({ resolve: resolvesTo(address) }));
      expect(decision.allowed).toBe(false);
      if (!decision.allowed) expect(decision.reason).toContain(address);
    }
  });

  test("IP literals, brackets included, are refused without a lookup", async () => {
    const resolve = async () => {
      throw new Error("must not resolve");
    };
    for (const host of ["127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "10.0.0.1", "169.254.169.254"]) {
      expect((await decideDestination(host, 80, policy({ resolve }))).allowed).toBe(false);
    }
  });

  test("SCRAPER_ALLOWED_HOSTS lets one host (or host:port) through; everything else stays refused", async () => {
    const p = policy({ allowedHosts: ["intranet.example.edu", "127.0.0.2:8080"], resolve: resolvesTo("10.0.0.8") });
    expect(await decideDestination("intranet.example.edu", 443, p)).toEqual({ allowed: true, address: "10.0.0.8" });
    expect((await decideDestination("127.0.0.2", 8080, p)).allowed).toBe(true);
    expect((await decideDestination("127.0.0.2", 8081, p)).allowed).toBe(false);
    expect((await decideDestination("other.example.edu", 443, p)).allowed).toBe(false);
  });

  test("SCRAPER_ALLOW_PRIVATE_HOSTS lets private addresses through", async () => {
    expect(await decideDestination("localhost", 8090, policy({ allowPrivate: true, resolve: resolvesTo("127.0.0.1") }))).toEqual({ allowed: true, address: "127.0.0.1" });
  });
});

describe("per-host politeness", () => {
  test("at most `cap` at once per host, and the gap between starts", async () => {
    const limiter = new HostLimiter(2, 50);
    const starts: number[] = [];
    let active = 0;
    let maxActive = 0;
    const t0 = Date.now();
    await Promise.all(
      Array.from({ length: 5 }, async () => {
        const release = await limiter.acquire("a.example");
        starts.push(Date.now() - t0);
        maxActive = Math.max(maxActive, ++active);
        await Bun.sleep(20);
        active--;
        release();
      }),
    );
    expect(maxActive).toBeLessThanOrEqual(2);
    starts.sort((a, b) => a - b);
    for (let i = 1; i < starts.length; i++) expect(starts[i]! - starts[i - 1]!).toBeGreaterThanOrEqual(45);
    expect(limiter.room("a.example")).toBe(2);
    expect(limiter.room("b.example")).toBe(2);
  });
});

