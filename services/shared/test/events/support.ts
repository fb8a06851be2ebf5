/** Shared set-up for the events tests: a database, a NATS prefix, streams, child processes, a TCP proxy. */
import { createServer, connect as tcpConnect, type Server, type Socket } from "node:net";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager, type JsMsg } from "@nats-io/jetstream";
import type { Subprocess } from "bun";
import { createSql, migrate, PLATFORM_MIGRATIONS, type Sql } from "../../src/db.ts";
import { consumerName, deleteStreams, enqueueMany, provisionStreams, startRelay, streamName, type Relay, type StreamLimits, type StreamName } from "../../src/events/index.ts";
import { createLogger, type Logger } from "../../src/logger.ts";
import { createTestDatabase, TEST_NATS_URL, testNatsPrefix, type TestDatabase } from "../../src/testing/harness.ts";
import { expect } from "bun:test";

/** Small limits: the server reserves max_bytes up front, and other test runs share it. */
export const TEST_STREAM_LIMITS: Partial<StreamLimits> = { maxBytes: 32 * 1024 * 1024, maxAgeMs: 60 * 60 * 1000 };

export interface EventsTestEnv {
  db: TestDatabase;
  schema: string;
  sql: Sql;
  prefix: string;
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  logger: Logger;
  cleanup(): Promise<void>;
}

/** A fresh database (migrated `schema`), a fresh prefix and the named streams under it. */
export async function setupEventsTest(schema: string, streams: StreamName[]): Promise<EventsTestEnv> {
  const db = await createTestDatabase();
  const sql = createSql({ url: db.url, schema, max: 6 });
  await migrate(sql, schema, [PLATFORM_MIGRATIONS]);
  const prefix = testNatsPrefix();
  const nc = await connect({ servers: TEST_NATS_URL, name: `events-test-${prefix}` });
  const jsm = await jetstreamManager(nc);
  const limits = Object.fromEntries(streams.map((s) => [s, TEST_STREAM_LIMITS]));
  await provisionStreams(jsm, prefix, streams, { limits });
  return {
    db,
    schema,
    sql,
    prefix,
    nc,
    js: jetstream(nc),
    jsm,
    logger: createLogger(`test-${schema}`, process.env.TEST_LOG_LEVEL ?? "silent"),
    async cleanup() {
      await deleteStreams(jsm, prefix).catch(() => {});
      await nc.close().catch(() => {});
      await sql.end({ timeout: 5 }).catch(() => {});
      await db.drop();
    },
  };
}

/** Every message in the stream, in stream order (an ordered consumer). */
export async function readStream(env: EventsTestEnv, stream: StreamName, expected?: number): Promise<JsMsg[]> {
  expected ??= (await env.jsm.streams.info(streamName(env.prefix, stream))).state.messages;
  const consumer = await env.js.consumers.get(streamName(env.prefix, stream));
  const out: JsMsg[] = [];
  while (out.length < expected) {
    const batch = await consumer.fetch({ max_messages: Math.min(1000, expected - out.length), expires: 2000 });
    let got = 0;
    for await (const msg of batch) {
      out.push(msg);
      got++;
    }
    if (got === 0) break;
  }
  return out;
}

/** Polls `probe` until it returns a value `done` accepts. */
export async function waitUntil<T>(probe: () => Promise<T> | T, done: (value: T) => boolean, timeoutMs: number, what: string): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  let last: T | undefined;
  while (performance.now() < deadline) {
    last = await probe();
    if (done(last)) return last;
    await Bun.sleep(50);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last value ${JSON.stringify(last)}`);
}

export interface Fixture {
  process: Subprocess<"ignore", "pipe", "pipe">;
  /** Parsed JSON log lines so far. */
  lines: Record<string, any>[];
  waitForLine(predicate: (line: Record<string, any>) => boolean, timeoutMs?: number): Promise<Record<string, any>>;
  stderr(): string;
  kill(): Promise<void>;
  stop(): Promise<number>;
}

/** Runs a fixture script under bun with `env`, collecting its JSON log lines. */
export function spawnFixture(script: string, env: Record<string, string>): Fixture {
  const child = Bun.spawn(["bun", "run", new URL(`./fixtures/${script}`, import.meta.url).pathname], {
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: process.env.HOME ?? "/tmp", ...env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const lines: Record<string, any>[] = [];
  let stderr = "";
  void (async () => {
    let buffered = "";
    const decoder = new TextDecoder();
    for await (const chunk of child.stdout) {
      buffered += decoder.decode(chunk);
      let newline: number;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        try {
          lines.push(JSON.parse(line));
        } catch {
          lines.push({ raw: line });
        }
      }
    }
  })();
  void (async () => {
    for await (const chunk of child.stderr) stderr += new TextDecoder().decode(chunk);
  })();
  return {
    process: child,
    lines,
    async waitForLine(predicate, timeoutMs = 15_000) {
      const deadline = performance.now() + timeoutMs;
      while (performance.now() < deadline) {
        const found = lines.find(predicate);
        if (found) return found;
        if (child.exitCode !== null) break;
        await Bun.sleep(25);
      }
      throw new Error(`${script} did not log the expected line (exit ${child.exitCode}); stderr:\n${stderr}\nlast lines: ${JSON.stringify(lines.slice(-10))}`);
    },
    stderr: () => stderr,
    async kill() {
      child.kill("SIGKILL");
      await child.exited;
    },
    async stop() {
      child.kill("SIGTERM");
      return child.exited;
    },
  };
}

/** A loopback TCP proxy to NATS whose connections the test can sever (nats-server itself is shared). */
export interface SeverableProxy {
  url: string;
  /** Destroys every open connection through the proxy; new ones are accepted. */
  sever(): number;
  /** Severs and refuses new connections until `resume()`: NATS is down, as far as clients can tell. */
  pause(): void;
  resume(): void;
  close(): Promise<void>;
}

export async function startNatsProxy(target = new URL(TEST_NATS_URL)): Promise<SeverableProxy> {
  const pairs = new Set<[Socket, Socket]>();
  let paused = false;
  const server: Server = createServer((client) => {
    if (paused) {
      client.destroy();
      return;
    }
    const upstream = tcpConnect(Number(target.port || 4222), target.hostname);
    const pair: [Socket, Socket] = [client, upstream];
    pairs.add(pair);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    client.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (!address || typeof address === "string") throw new Error("proxy has no port");
  const sever = () => {
    const n = pairs.size;
    for (const [a, b] of [...pairs]) {
      a.destroy();
      b.destroy();
    }
    pairs.clear();
    return n;
  };
  return {
    url: `nats://127.0.0.1:${address.port}`,
    sever,
    pause() {
      paused = true;
      sever();
    },
    resume() {
      paused = false;
    },
    async close() {
      sever();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * Writes `total` seat changes over `aggregates` monitors through the outbox (100 per transaction,
 * versions rising per monitor), starts the relay and waits until all are in SEATS. The caller stops the relay.
 */
export async function relaySeatChanges(env: EventsTestEnv, service: string, total: number, aggregates: number): Promise<Relay> {
  const relay = await startRelay({ sql: env.sql, natsServers: [TEST_NATS_URL], service, prefix: env.prefix, logger: env.logger });
  for (let batch = 0; batch < total / 100; batch++) {
    await env.sql.begin((tx) =>
      enqueueMany(
        tx,
        Array.from({ length: 100 }, (_, i) => {
          const monitor = `m${i % aggregates}`;
          const version = batch * (100 / aggregates) + Math.floor(i / aggregates) + 1;
          return { subject: `seats.changed.${monitor}`, type: "coursemesh.events.v1.SeatsChanged", aggregateId: monitor, aggregateVersion: version, payload: { monitorId: monitor } };
        }),
      ),
    );
  }
  await waitUntil(async () => (await env.jsm.streams.info(streamName(env.prefix, "SEATS"))).state.messages, (n) => n === total, 15_000, "all events in the stream");
  return relay;
}

/** Waits until the durable consumer of SEATS has acked everything. */
export async function waitForDrained(env: EventsTestEnv, durable: string, timeoutMs = 30_000): Promise<void> {
  await waitUntil(
    () => env.jsm.consumers.info(streamName(env.prefix, "SEATS"), consumerName(env.prefix, durable)),
    (info) => info.num_pending === 0 && info.num_ack_pending === 0,
    timeoutMs,
    `${durable} to ack everything`,
  );
}

/** The consumer fixture's `applied` table holds each of `total` events exactly once, every version of every aggregate. */
export async function expectEachAppliedOnce(env: EventsTestEnv, durable: string, total: number, aggregates: number): Promise<void> {
  const [totals] = await env.sql`select count(*)::int as rows, count(distinct event_id)::int as events from applied`;
  expect(totals).toEqual({ rows: total, events: total });
  const [dedupe] = await env.sql`select count(*)::int as n from consumed_events where consumer = ${durable}`;
  expect(dedupe!.n).toBe(total);
  const perAggregate = await env.sql`select aggregate_id, count(distinct version)::int as versions from applied group by aggregate_id`;
  expect(perAggregate).toHaveLength(aggregates);
  for (const row of perAggregate) expect(row.versions).toBe(total / aggregates);
}
