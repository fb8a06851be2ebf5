import { describe, expect, test } from "bun:test";
import { CONFIG_REGISTRY, loadConfig, readsVariable, SERVICE_NAMES, SERVICE_PORTS } from "../src/config.ts";

const base = { AUTH_JWT_SECRET: "x".repeat(32) };

describe("configuration registry", () => {
  test("defaults follow DESIGN.md: local URLs and each service's ports", () => {
    const config = loadConfig("notifier", base);
    expect(config.DATABASE_URL).toBe("postgres://postgres@127.0.0.1:5432/coursemesh");
    expect(config.NATS_URL).toEqual(["nats://127.0.0.1:4222"]);
    expect(config.GRPC_PORT).toBe(50053);
    expect(config.HTTP_PORT).toBe(8083);
    expect(config.AUTH_DISABLED).toBe(false);
    for (const service of SERVICE_NAMES) {
      const c = loadConfig(service, base);
      expect(c.GRPC_PORT).toBe(SERVICE_PORTS[service].grpc);
      expect(c.HTTP_PORT).toBe(SERVICE_PORTS[service].http);
    }
  });

  test("values are parsed to their types", () => {
    const config = loadConfig("allocator", { ...base, GRPC_PORT: "6000", AUTH_DISABLED: "true", NATS_URL: "nats://a:1, nats://b:2" });
    expect(config.GRPC_PORT).toBe(6000);
    expect(config.AUTH_DISABLED).toBe(true);
    expect(config.NATS_URL).toEqual(["nats://a:1", "nats://b:2"]);
  });

  test("every problem is reported at once, each naming its variable", () => {
    let message = "";
    try {
      loadConfig("scraper", { GRPC_PORT: "http", DATABASE_URL: "mysql://x", LOG_LEVEL: "loud", AUTH_DISABLED: "maybe" });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toContain("invalid configuration for scraper");
    expect(message).toContain('GRPC_PORT must be a whole number, got "http"');
    expect(message).toContain("DATABASE_URL must be a postgres:// or postgresql:// URL");
    expect(message).toContain("LOG_LEVEL must be one of");
    expect(message).toContain('AUTH_DISABLED must be true or false, got "maybe"');
  });

  test("auth must be configured unless explicitly disabled", () => {
    expect(() => loadConfig("ingest", {})).toThrow(/AUTH_JWT_SECRET or AUTH_JWKS_URL must be set/);
    expect(() => loadConfig("ingest", { AUTH_JWT_SECRET: "short" })).toThrow(/AUTH_JWT_SECRET must be at least 32 characters/);
    expect(loadConfig("ingest", { AUTH_DISABLED: "true" }).AUTH_DISABLED).toBe(true);
    expect(loadConfig("ingest", { AUTH_JWKS_URL: "https://idp.example/jwks" }).AUTH_JWKS_URL).toBe("https://idp.example/jwks");
  });

  test("the web dashboard reads its own variables and the backends' addresses, never the database or NATS", () => {
    const web = loadConfig("web", { ...base, WEB_SESSION_SECRET: "w".repeat(32) });
    expect(web.HTTP_PORT).toBe(SERVICE_PORTS.web.http);
    expect(web.GRPC_PORT).toBeUndefined();
    expect(web.DATABASE_URL).toBeUndefined();
    expect(web.NATS_URL).toBeUndefined();
    expect(web.WEB_COOKIE_SECURE).toBe(false);
    expect([web.SCRAPER_ADDR, web.ALLOCATOR_ADDR, web.NOTIFIER_ADDR, web.INGEST_ADDR]).toEqual(
      SERVICE_NAMES.map((service) => `127.0.0.1:${SERVICE_PORTS[service].grpc}`),
    );
    expect(readsVariable("web", "AUTH_DISABLED")).toBe(false);
    expect(readsVariable("scraper", "WEB_SESSION_SECRET")).toBe(false);
    expect(() => loadConfig("web", base)).toThrow(/WEB_SESSION_SECRET must be set/);
    expect(() => loadConfig("web", { ...base, WEB_SESSION_SECRET: "short" })).toThrow(/WEB_SESSION_SECRET must be at least 32 characters/);
    expect(() => loadConfig("web", { WEB_SESSION_SECRET: "w".repeat(32) })).toThrow(/AUTH_JWT_SECRET or AUTH_JWKS_URL must be set$/m);
  });

  test("ports out of range and bad prefixes are refused", () => {
    expect(() => loadConfig("ingest", { ...base, HTTP_PORT: "70000" })).toThrow(/HTTP_PORT must be between 0 and 65535/);
    expect(() => loadConfig("ingest", { ...base, NATS_PREFIX: "Bad.Prefix" })).toThrow(/NATS_PREFIX/);
  });

  test("the notifier's history retention is whole days from 1 to 3650, 90 by default", () => {
    expect(loadConfig("notifier", base).NOTIFIER_HISTORY_RETENTION_DAYS).toBe(90);
    expect(loadConfig("notifier", { ...base, NOTIFIER_HISTORY_RETENTION_DAYS: "365" }).NOTIFIER_HISTORY_RETENTION_DAYS).toBe(365);
    expect(() => loadConfig("notifier", { ...base, NOTIFIER_HISTORY_RETENTION_DAYS: "0" })).toThrow(/NOTIFIER_HISTORY_RETENTION_DAYS must be between 1 and 3650, got 0/);
    expect(() => loadConfig("notifier", { ...base, NOTIFIER_HISTORY_RETENTION_DAYS: "90d" })).toThrow(/NOTIFIER_HISTORY_RETENTION_DAYS must be a whole number, got "90d"/);
    expect(() => loadConfig("notifier", { ...base, NOTIFIER_HISTORY_PRUNE_INTERVAL_SECONDS: "0" })).toThrow(/NOTIFIER_HISTORY_PRUNE_INTERVAL_SECONDS must be between 1 and 86400/);
    expect(readsVariable("allocator", "NOTIFIER_HISTORY_RETENTION_DAYS")).toBe(false);
  });

  test("the registry is exportable: every entry says who reads it and what it is for", () => {
    for (const [name, spec] of Object.entries(CONFIG_REGISTRY)) {
      expect(name).toMatch(/^[A-Z][A-Z0-9_]*$/);
      expect(spec.description.length).toBeGreaterThan(10);
      expect(spec.readers === "all" || spec.readers.length > 0).toBe(true);
    }
    expect(readsVariable("scraper", "DATABASE_URL")).toBe(true);
    expect(CONFIG_REGISTRY.AUTH_JWT_SECRET.secret).toBe(true);
  });
});
