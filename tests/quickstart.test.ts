/**
 * The README's Quick start, run as a newcomer would: `bun run dev --once` with no DATABASE_URL and no
 * NATS_URL brings up an embedded Postgres and nats-server from the PATH, starts what exists and the
 * web dashboard, runs the main job, checks the dashboard answers, prints dev tokens and where to
 * sign in, and stops everything. Worth its ~15 s: it is the first thing people try.
 */
import { expect, test } from "bun:test";
import { SERVICE_PORTS } from "../services/shared/src/config.ts";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

async function freePort(): Promise<number> {
  const server = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = server.port;
  server.stop(true);
  return port;
}

test("bun run dev --once brings the system up from nothing and shuts it down", async () => {
  const devDir = mkdtempSync(join(tmpdir(), "coursemesh-dev-"));
  // As root, Postgres runs as the postgres user, which must be able to reach its data directory.
  chmodSync(devDir, 0o755);
  const env: Record<string, string> = {
    PATH: process.env.PATH!,
    HOME: process.env.HOME ?? "/tmp",
    DEV_DIR: devDir,
    DEV_POSTGRES_PORT: String(await freePort()),
    DEV_NATS_PORT: String(await freePort()),
  };
  const child = Bun.spawn(["bun", "run", "dev", "--once"], {
    cwd: join(import.meta.dir, ".."),
    env,
    stdout: "pipe",
    stderr: "pipe",
  });
  const [code, stdout, stderr] = await Promise.all([child.exited, new Response(child.stdout).text(), new Response(child.stderr).text()]);
  try {
    expect({ code, stderr: code === 0 ? "" : stderr }).toEqual({ code: 0, stderr: "" });
    expect(stdout).toContain(`embedded Postgres on 127.0.0.1:${env.DEV_POSTGRES_PORT}`);
    expect(stdout).toContain(`nats-server (JetStream) on nats://127.0.0.1:${env.DEV_NATS_PORT}`);
    expect(stdout).toMatch(/registrar +eyJ[\w-]+\.[\w-]+\.[\w-]+/);
    // The dashboard came up after the services, answered, and the summary says where to sign in.
    const dashboard = `http://127.0.0.1:${SERVICE_PORTS.web.http}`;
    expect(stdout).toContain(`web ready: dashboard ${dashboard}`);
    expect(stdout).toMatch(new RegExp(`dashboard answers: /healthz ok, sign-in page at ${dashboard}/\\S*; a registrar's dev token signs in and opens ${dashboard}/\\S+`));
    expect(stdout).toContain(`open ${dashboard} and sign in`);
    expect(stdout).toContain("bun run token --role registrar --sub alice");
    expect(stdout.indexOf("web ready")).toBeGreaterThan(stdout.lastIndexOf("ingest ready"));
    // Everything it started is gone: the ports are free again.
    for (const port of [env.DEV_POSTGRES_PORT, env.DEV_NATS_PORT, String(SERVICE_PORTS.web.http)]) {
      const open = await Bun.connect({ hostname: "127.0.0.1", port: Number(port), socket: { data() {} } }).then(
        (s) => (s.end(), true),
        () => false,
      );
      expect(open).toBe(false);
    }
  } finally {
    rmSync(devDir, { recursive: true, force: true });
  }
}, 120_000);
