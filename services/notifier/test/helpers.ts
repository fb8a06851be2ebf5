/**
 * Real parts for the notifier's tests: an SMTP server (smtp-server) that records what it accepts,
 * a webhook receiver (Bun.serve), the notifier process itself, and a JetStream publisher that
 * sends events the way the other services' relays do. Everything listens on 127.0.0.1 only.
 */
import * as grpc from "@grpc/grpc-js";
import { jetstream, jetstreamManager, type StoredMsg } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { simpleParser } from "mailparser";
import { SMTPServer } from "smtp-server";
import {
  ConfirmSubscriptionRequest,
  ListNotificationsRequest,
  ListSubscriptionsRequest,
  NotificationServiceClient,
  SendTestRequest,
  SubscribeRequest,
  UnsubscribeRequest,
} from "@coursemesh/proto/coursemesh/notifier/v1/notifier";
import { deleteStreams, prefixedSubject, provisionStreams, publishEvent, streamName } from "@coursemesh/shared/events/index";
import { ROOT_CONTEXT } from "@opentelemetry/api";
import { createClient, unary } from "@coursemesh/shared/grpc/client";
import { decodeGrpcError, type DecodedError } from "@coursemesh/shared/grpc/errors";
import { createTestDatabase, startServiceProcess, testNatsPrefix, TEST_NATS_URL, type ServiceProcess, type TestDatabase } from "@coursemesh/shared/testing/harness";
import { eventually } from "@coursemesh/shared/testing/eventually.ts";
export { eventually };

/** A message the SMTP server accepted, parsed. */
export interface ReceivedEmail {
  to: string[];
  from: string;
  subject: string;
  messageId: string;
  text: string;
  html: string;
  /** Raw header values by lower-case name (first occurrence). */
  headers: Map<string, string>;
  acceptedAt: number;
}

export interface TestSmtp {
  port: number;
  url: string;
  received: ReceivedEmail[];
  /** Replies to RCPT TO for an address: e.g. 550 (permanent) or 451 (try later); undefined accepts. */
  rejectRecipient: (address: string) => { code: number; message: string } | undefined;
  /** Resolves once `count` messages (in total) were accepted. */
  waitFor(count: number, timeoutMs?: number): Promise<ReceivedEmail[]>;
  close(): Promise<void>;
}

/** Starts an SMTP server on 127.0.0.1 (port 0 picks one; pass a port to restart "the same" server). */
export async function startSmtp(options: { port?: number; parse?: boolean } = {}): Promise<TestSmtp> {
  const received: ReceivedEmail[] = [];
  const waiters: { count: number; resolve: () => void }[] = [];
  const state: TestSmtp = {
    port: 0,
    url: "",
    received,
    rejectRecipient: () => undefined,
    async waitFor(count, timeoutMs = 15_000) {
      if (received.length >= count) return received;
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`expected ${count} emails, got ${received.length}: ${received.map((m) => m.subject).join(" | ")}`)), timeoutMs);
        waiters.push({
          count,
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
        });
      });
      return received;
    },
    close: async () => {},
  };
  const parse = options.parse ?? true;
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ["STARTTLS"],
    logger: false,
    size: 1024 * 1024,
    // The notifier's pooled connections stay open; do not wait 30 s for them on close.
    closeTimeout: 200,
    // Loopback clients: a reverse DNS lookup per connection would only measure the resolver.
    disableReverseLookup: true,
    onRcptTo(address, _session, callback) {
      const rejection = state.rejectRecipient(address.address);
      if (!rejection) return callback();
      const error = new Error(rejection.message) as Error & { responseCode: number };
      error.responseCode = rejection.code;
      return callback(error);
    },
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("end", async () => {
        const acceptedAt = Date.now();
        const raw = Buffer.concat(chunks);
        const to = session.envelope.rcptTo.map((r) => r.address);
        const from = session.envelope.mailFrom ? session.envelope.mailFrom.address : "";
        if (parse) {
          const mail = await simpleParser(raw);
          received.push({
            to,
            from,
            subject: mail.subject ?? "",
            messageId: mail.messageId ?? "",
            text: mail.text ?? "",
            html: typeof mail.html === "string" ? mail.html : "",
            headers: new Map(mail.headerLines.map((h) => [h.key, h.line.slice(h.line.indexOf(":") + 1).trim()] as [string, string]).reverse()),
            acceptedAt,
          });
        } else {
          const head = raw.subarray(0, 4096).toString("latin1");
          received.push({ to, from, subject: "", messageId: /^Message-ID:\s*(.+)$/im.exec(head)?.[1]?.trim() ?? "", text: "", html: "", headers: new Map(), acceptedAt });
        }
        for (const waiter of [...waiters]) {
          if (received.length >= waiter.count) {
            waiters.splice(waiters.indexOf(waiter), 1);
            waiter.resolve();
          }
        }
        callback();
      });
    },
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, "127.0.0.1", () => resolve());
  });
  // Multi-line replies (EHLO) are several writes; without this, Nagle waits on the client's delayed ACK.
  server.server.on("connection", (socket: { setNoDelay(on: boolean): void }) => socket.setNoDelay(true));
  const address = server.server.address();
  state.port = typeof address === "object" && address ? address.port : 0;
  state.url = `smtp://127.0.0.1:${state.port}`;
  state.close = () => new Promise<void>((resolve) => server.close(() => resolve()));
  return state;
}

/** A request the webhook receiver got. */
export interface ReceivedWebhook {
  headers: Record<string, string>;
  body: string;
  json: any;
}

export interface TestWebhookReceiver {
  url: string;
  received: ReceivedWebhook[];
  /** The HTTP status to answer with (200 by default). */
  status: number;
  waitFor(count: number, timeoutMs?: number): Promise<ReceivedWebhook[]>;
  stop(): Promise<void>;
}

/** A webhook receiver on 127.0.0.1 that records every POST. */
export function startWebhookReceiver(): TestWebhookReceiver {
  const receiver: TestWebhookReceiver = {
    url: "",
    received: [],
    status: 200,
    async waitFor(count, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      while (receiver.received.length < count) {
        if (Date.now() > deadline) throw new Error(`expected ${count} webhooks, got ${receiver.received.length}`);
        await Bun.sleep(25);
      }
      return receiver.received;
    },
    stop: async () => {},
  };
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request) {
      const body = await request.text();
      const headers: Record<string, string> = {};
      request.headers.forEach((value, key) => (headers[key] = value));
      receiver.received.push({ headers, body, json: JSON.parse(body) });
      return new Response(receiver.status < 300 ? "ok" : "nope", { status: receiver.status });
    },
  });
  receiver.url = `http://127.0.0.1:${server.port}/hooks/coursemesh`;
  receiver.stop = async () => {
    await server.stop(true);
  };
  return receiver;
}

/** The notifier's environment for a test: its own database and NATS prefix, loopback webhooks allowed. */
export interface NotifierWorld {
  db: TestDatabase;
  prefix: string;
  nats: NatsConnection;
  env: Record<string, string>;
  /** Publishes an event as a producer's relay would (proto3 JSON, our headers). */
  publish(subject: string, type: string, payload: Record<string, unknown>, aggregate: { id: string; version: number }): Promise<void>;
  cleanup(): Promise<void>;
}

/** Creates a test database and NATS prefix with the notifier's streams provisioned. */
export async function createWorld(): Promise<NotifierWorld> {
  const db = await createTestDatabase();
  const prefix = testNatsPrefix();
  const nats = await connect({ servers: TEST_NATS_URL });
  const jsm = await jetstreamManager(nats);
  await provisionStreams(jsm, prefix, ["SEATS", "ENROLLMENT", "INGEST", "DLQ"]);
  const js = jetstream(nats);
  return {
    db,
    prefix,
    nats,
    env: {
      DATABASE_URL: db.url,
      NATS_PREFIX: prefix,
      NOTIFIER_ALLOW_PRIVATE_HOSTS: "true",
      NOTIFIER_PUBLIC_URL: "http://notifier.test",
      NOTIFIER_POLL_MS: "100",
      NOTIFIER_RETRY_BASE_MS: "200",
      NOTIFIER_RETRY_MAX_MS: "1000",
      NOTIFIER_EMAIL_RATE_PER_HOUR: "1000",
    },
    async publish(subject, type, payload, aggregate) {
      await publishEvent(
        { js, prefix, service: "test" },
        { eventId: payload.eventId as string, subject, type, aggregateId: aggregate.id, aggregateVersion: aggregate.version, body: JSON.stringify(payload) },
        ROOT_CONTEXT,
      );
    },
    async cleanup() {
      await deleteStreams(jsm, prefix);
      await nats.close();
      await db.drop();
    },
  };
}

/** Starts the notifier process against `world` and `smtp`, with extra environment. */
export async function startNotifier(world: NotifierWorld, smtp: { url: string }, env: Record<string, string> = {}): Promise<ServiceProcess> {
  return startServiceProcess("notifier", { env: { ...world.env, NOTIFIER_SMTP_URL: smtp.url, ...env } });
}

/** A gRPC client of a running notifier. */
export function notifierClient(address: string): NotificationServiceClient {
  return createClient(NotificationServiceClient, address, { caller: "test", defaultDeadlineMs: 10_000 });
}

type Method = "subscribe" | "unsubscribe" | "listSubscriptions" | "confirmSubscription" | "listNotifications" | "sendTest";

const REQUESTS: Record<Method, { fromPartial(object: any): object }> = {
  subscribe: SubscribeRequest,
  unsubscribe: UnsubscribeRequest,
  listSubscriptions: ListSubscriptionsRequest,
  confirmSubscription: ConfirmSubscriptionRequest,
  listNotifications: ListNotificationsRequest,
  sendTest: SendTestRequest,
};

/** Calls one RPC with a bearer token (none for ""); unset fields get their defaults, as with any proto client. */
export function call<R = any>(client: NotificationServiceClient, method: Method, request: object, token = ""): Promise<R> {
  const metadata = new grpc.Metadata();
  if (token) metadata.set("authorization", `Bearer ${token}`);
  return unary<object, R>((client as any)[method].bind(client), REQUESTS[method].fromPartial(request), { metadata });
}

/** The decoded error of a call that must fail. */
export async function failure(promise: Promise<unknown>): Promise<DecodedError> {
  try {
    await promise;
  } catch (error) {
    return decodeGrpcError(error);
  }
  throw new Error("expected the call to fail");
}

/** Waits for a message on the world's DLQ stream with this subject (without prefix) that `matches` accepts. */
export async function dlqMessage(world: NotifierWorld, subject: string, matches: (message: StoredMsg) => boolean = () => true): Promise<StoredMsg> {
  const jsm = await jetstreamManager(world.nats);
  const dlq = streamName(world.prefix, "DLQ");
  return eventually(async () => {
    const { state } = await jsm.streams.info(dlq);
    for (let seq = state.first_seq; seq <= state.last_seq && state.messages > 0; seq++) {
      const message = await jsm.streams.getMessage(dlq, { seq }).catch(() => undefined);
      if (message?.subject === prefixedSubject(world.prefix, subject) && matches(message)) return message;
    }
    return undefined;
  }, 15_000, `a message on ${subject}`);
}
