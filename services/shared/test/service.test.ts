import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import * as grpc from "@grpc/grpc-js";
import postgres from "postgres";
import { createSql, migrate, PLATFORM_MIGRATIONS } from "../src/db.ts";
import { unary } from "../src/grpc/client.ts";
import { createLogger } from "../src/logger.ts";
import { SHUTDOWN_PHASES } from "../src/shutdown.ts";
import { startTelemetry, withSpan } from "../src/telemetry.ts";
import { createTestDatabase, startServiceProcess, testToken, type ServiceProcess, type TestDatabase } from "../src/testing/harness.ts";
import { PlatformTestClient } from "./fixtures/platform-service.ts";

const FIXTURE = "services/shared/test/fixtures/sample-service.ts";
let db: TestDatabase;
let service: ServiceProcess;

beforeAll(async () => {
  db = await createTestDatabase();
  service = await startServiceProcess("ingest", { entry: FIXTURE, env: { DATABASE_URL: db.url } });
});

afterAll(async () => {
  if (service.process.exitCode === null) await service.kill();
  await db.drop();
});

describe("a service assembled by runService", () => {
  test("/healthz, and /readyz with Postgres and NATS reachable", async () => {
    expect((await fetch(`${service.httpUrl}/healthz`)).status).toBe(200);
    const readyz = await fetch(`${service.httpUrl}/readyz`);
    expect(readyz.status).toBe(200);
    const body = (await readyz.json()) as { checks: { name: string; ok: boolean }[] };
    expect(body.checks.map((c) => [c.name, c.ok])).toEqual([
      ["postgres", true],
      ["nats", true],
      ["sample", true],
    ]);
  });

  test("serves gRPC with auth, and /metrics shows process and gRPC metrics", async () => {
    const client = new PlatformTestClient(service.grpcAddress, grpc.credentials.createInsecure()) as any;
    const token = await testToken("registrar-1", ["registrar"]);
    const reply = await unary<object, any>(client.Whoami.bind(client), {}, { token });
    expect(reply.subject).toBe("registrar-1");
    client.close();
    const metrics = await (await fetch(`${service.httpUrl}/metrics`)).text();
    expect(metrics).toContain("process_cpu_seconds_total");
    expect(metrics).toMatch(/grpc_server_handled_total\{[^}]*grpc_method="Whoami"[^}]*grpc_code="OK"[^}]*service="ingest"/);
  });

  test("applied the platform's and its own migrations into its schema", async () => {
    const sql = postgres(db.url, { max: 1, onnotice: () => {} });
    const versions = (await sql`select version from ingest.schema_migrations order by version`).map((r) => r.version);
    expect(versions).toContain("ingest/00001");
    const [table] = await sql`select to_regclass('ingest.notes') as name`;
    expect(table?.name).toBe("ingest.notes");
    await sql.end();
  });

  test("SIGTERM: NOT_SERVING first, then each phase in order, and exit 0", async () => {
    const code = await service.stop();
    expect(code).toBe(0);
    const phases = service.logs.filter((l) => l.msg === "shutdown phase").map((l) => l.phase);
    expect(phases).toEqual([...SHUTDOWN_PHASES]);
  });
});

describe("start-up refuses bad configuration", () => {
  test("a bad variable is named and the process exits non-zero without a stack trace", async () => {
    const child = Bun.spawn(["bun", "run", FIXTURE], {
      env: { PATH: process.env.PATH!, GRPC_PORT: "grpc", AUTH_DISABLED: "true" },
      stdout: "pipe",
      stderr: "pipe",
    });
    const [code, stderr] = await Promise.all([child.exited, new Response(child.stderr).text()]);
    expect(code).toBe(78);
    expect(stderr).toContain('GRPC_PORT must be a whole number, got "grpc"');
    expect(stderr).not.toContain("at ");
  });
});

describe("migrations", () => {
  test("replicas migrating at once apply each migration exactly once", async () => {
    const dir = mkdtempSync(join(tmpdir(), "migrations-"));
    writeFileSync(join(dir, "00001_items.sql"), "create table items (id int primary key);");
    writeFileSync(join(dir, "00002_items_name.sql"), "alter table items add column name text;");
    const pools = [0, 1, 2].map(() => createSql({ url: db.url, schema: "race", max: 2 }));
    const results = await Promise.all(pools.map((sql) => migrate(sql, "race", [PLATFORM_MIGRATIONS, { name: "race", dir }])));
    expect(results.map((r) => r.filter((v) => v.startsWith("race/")).length).sort()).toEqual([0, 0, 2]);
    const [count] = await pools[0]!`select count(*)::int as n from race.schema_migrations where version like 'race/%'`;
    expect(count?.n).toBe(2);
    await Promise.all(pools.map((sql) => sql.end()));
  });

  test("an applied migration that was edited is refused, and nothing else is applied", async () => {
    const dir = mkdtempSync(join(tmpdir(), "migrations-"));
    writeFileSync(join(dir, "00001_things.sql"), "create table things (id int primary key);");
    const sql = createSql({ url: db.url, schema: "edited", max: 1 });
    await migrate(sql, "edited", [{ name: "edited", dir }]);
    writeFileSync(join(dir, "00001_things.sql"), "create table things (id bigint primary key);");
    writeFileSync(join(dir, "00002_more.sql"), "create table more (id int);");
    expect(migrate(sql, "edited", [{ name: "edited", dir }])).rejects.toThrow(/was changed after it was applied/);
    const [more] = await sql`select to_regclass('edited.more') as name`;
    expect(more?.name).toBeNull();
    await sql.end();
  });

  test("a failing migration rolls back whole", async () => {
    const dir = mkdtempSync(join(tmpdir(), "migrations-"));
    writeFileSync(join(dir, "00001_ok.sql"), "create table ok (id int);");
    writeFileSync(join(dir, "00002_broken.sql"), "create table broken (id int); select no_such_function();");
    const sql = createSql({ url: db.url, schema: "broken", max: 1 });
    expect(migrate(sql, "broken", [{ name: "broken", dir }])).rejects.toThrow(/no_such_function/);
    const [ok] = await sql`select to_regclass('broken.ok') as name`;
    expect(ok?.name).toBeNull();
    await sql.end();
  });
});

describe("logs", () => {
  test("JSON lines carry trace_id and span_id inside a span, and none outside", async () => {
    startTelemetry("logtest");
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk, _encoding, done) {
        lines.push(JSON.parse(chunk.toString()));
        done();
      },
    });
    const logger = createLogger("logtest", "info", sink);
    logger.info("outside");
    // With no exporter configured, spans are not recorded, but a remote parent's ids still flow through.
    const { extractTraceContext } = await import("../src/telemetry.ts");
    const parent = extractTraceContext({ traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" });
    await withSpan("logtest.work", { parent }, async () => logger.info("inside"));
    expect(lines[0]).toMatchObject({ msg: "outside", service: "logtest", level: "info" });
    expect(lines[0]?.trace_id).toBeUndefined();
    expect(lines[1]).toMatchObject({ msg: "inside", trace_id: "0af7651916cd43dd8448eb211c80319c" });
    expect(typeof lines[1]?.span_id).toBe("string");
  });
});
