/**
 * Test harness: every test file gets its own database and NATS prefix, so files run in any order
 * and in parallel; service processes are started and stopped from tests.
 */
import { randomBytes } from "node:crypto";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import type { Subprocess } from "bun";
import postgres from "postgres";
import { mintToken, type Role } from "../auth.ts";
import type { ProcessName } from "../config.ts";
import { readLines } from "../lines.ts";

/** Postgres server the tests create their databases on. */
export const TEST_POSTGRES_URL = process.env.TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
export const TEST_NATS_URL = process.env.TEST_NATS_URL ?? "nats://127.0.0.1:4222";
/** The HS256 secret test services verify tokens with. */
export const TEST_JWT_SECRET = "coursemesh-test-secret-0123456789abcdef";

const REPO_ROOT = new URL("../../../../", import.meta.url).pathname;

/** A short random id, lowercase, safe in database, stream and subject names. */
export function uniqueId(prefix = "t"): string {
  return `${prefix}${randomBytes(5).toString("hex")}`;
}

export interface TestDatabase {
  name: string;
  url: string;
  drop(): Promise<void>;
}

/** Creates an empty database for one test file; `drop()` removes it (and ends its connections). */
export async function createTestDatabase(): Promise<TestDatabase> {
  const name = uniqueId("cm_test_");
  const admin = postgres(TEST_POSTGRES_URL, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`create database "${name}"`);
  } finally {
    await admin.end();
  }
  const url = new URL(TEST_POSTGRES_URL);
  url.pathname = `/${name}`;
  return {
    name,
    url: url.toString(),
    async drop() {
      const sql = postgres(TEST_POSTGRES_URL, { max: 1, onnotice: () => {} });
      try {
        await sql.unsafe(`drop database if exists "${name}" with (force)`);
      } finally {
        await sql.end();
      }
    },
  };
}

/** A NATS prefix of the test file's own (streams, consumers and subjects). */
export function testNatsPrefix(): string {
  return uniqueId("t");
}

/**
 * Deletes every JetStream stream a test prefix made: the event streams (`<PREFIX>_…`) and the
 * object-store buckets (`OBJ_<prefix>_…`), whichever services made them.
 */
export async function removeNatsPrefix(prefix: string): Promise<void> {
  const owned = [`${prefix.toUpperCase()}_`, `OBJ_${prefix}_`];
  const nats = await connect({ servers: TEST_NATS_URL });
  try {
    const jsm = await jetstreamManager(nats);
    for await (const info of jsm.streams.list()) {
      if (owned.some((start) => info.config.name.startsWith(start))) await jsm.streams.delete(info.config.name).catch(() => {});
    }
  } finally {
    await nats.close();
  }
}

/** Mints a token the test services accept. */
export function testToken(subject: string, roles: Role[], email?: string): Promise<string> {
  return mintToken({ subject, roles, email, secret: TEST_JWT_SECRET, expiresIn: "1h" });
}

export interface ServiceProcess {
  service: string;
  /** host:port of its gRPC server; empty for a process without one (the web dashboard). */
  grpcAddress: string;
  httpUrl: string;
  process: Subprocess<"ignore", "pipe", "pipe">;
  /** Every log line so far, parsed. */
  logs: Record<string, unknown>[];
  /** SIGTERM and wait for exit; returns the exit code. */
  stop(): Promise<number>;
  /** SIGKILL, no goodbye. */
  kill(): Promise<void>;
}

/** SIGTERM, and SIGKILL if the process has not exited within `graceMs`. */
export function stopOrKill(service: ServiceProcess, graceMs = 15_000): Promise<unknown> {
  return Promise.race([service.stop(), Bun.sleep(graceMs).then(() => service.kill())]);
}

export interface StartServiceOptions {
  /** Entry file relative to the repo root; defaults to `services/<service>/src/main.ts`. */
  entry?: string;
  env: Record<string, string>;
  /** How long to wait for the "ready" log line. */
  timeoutMs?: number;
}

/**
 * Starts `bun run <entry>` on free ports (GRPC_PORT=0, HTTP_PORT=0) and resolves once the service
 * logs that it is ready, with its addresses.
 */
export async function startServiceProcess(service: ProcessName | string, options: StartServiceOptions): Promise<ServiceProcess> {
  const entry = options.entry ?? `services/${service}/src/main.ts`;
  const child = Bun.spawn(["bun", "run", entry], {
    cwd: REPO_ROOT,
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: process.env.HOME ?? "/tmp",
      BIND_HOST: "127.0.0.1",
      GRPC_PORT: "0",
      HTTP_PORT: "0",
      LOG_LEVEL: "info",
      NATS_URL: TEST_NATS_URL,
      AUTH_JWT_SECRET: TEST_JWT_SECRET,
      SHUTDOWN_TIMEOUT_MS: "10000",
      // JetStream reserves each stream's max_bytes up front; a test run needs little.
      EVENTS_STREAM_MAX_BYTES: String(256 * 1024 * 1024),
      ...options.env,
    },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const logs: Record<string, unknown>[] = [];
  let stderr = "";
  const ready = new Promise<{ grpcPort?: number; httpPort: number }>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${service} did not become ready in ${options.timeoutMs ?? 30000} ms\n${stderr}\n${JSON.stringify(logs.slice(-20))}`)),
      options.timeoutMs ?? 30_000,
    );
    void (async () => {
      for await (const line of readLines(child.stdout)) {
        try {
          const entry = JSON.parse(line) as Record<string, unknown>;
          logs.push(entry);
          // Every service logs "<service> ready" with its ports; one without gRPC has only httpPort.
          const isReadyLine = typeof entry.grpcPort === "number" || (typeof entry.msg === "string" && entry.msg.endsWith(" ready"));
          if (isReadyLine && typeof entry.httpPort === "number") {
            clearTimeout(timer);
            resolve({ grpcPort: typeof entry.grpcPort === "number" ? entry.grpcPort : undefined, httpPort: entry.httpPort });
          }
        } catch {
          logs.push({ raw: line });
        }
      }
    })();
    void (async () => {
      for await (const chunk of child.stderr) stderr += new TextDecoder().decode(chunk);
    })();
    void child.exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${service} exited with ${code} before it was ready\n${stderr}\n${JSON.stringify(logs.slice(-20))}`));
    });
  });
  const { grpcPort, httpPort } = await ready;
  return {
    service,
    grpcAddress: grpcPort === undefined ? "" : `127.0.0.1:${grpcPort}`,
    httpUrl: `http://127.0.0.1:${httpPort}`,
    process: child,
    logs,
    async stop() {
      child.kill("SIGTERM");
      return child.exited;
    },
    async kill() {
      child.kill("SIGKILL");
      await child.exited;
    },
  };
}
