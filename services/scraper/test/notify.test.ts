// "Email me when a seat opens", across two real services: notify_emails become the notifier's
// subscriptions (on the caller's behalf, in the caller's trace), a seat change reaches the inbox
// through SEATS, events carry no address, and with the notifier down CreateMonitor fails UNAVAILABLE
// leaving nothing behind. Real scraper and notifier processes, SMTP server, Postgres, NATS, Chromium.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as grpc from "@grpc/grpc-js";
import { Channel, ListSubscriptionsRequest, NotificationServiceClient, SubscriptionStatus, type ListSubscriptionsResponse } from "@coursemesh/proto/coursemesh/notifier/v1/notifier";
import { unary } from "@coursemesh/shared/grpc/client.ts";
import { decodeGrpcError } from "@coursemesh/shared/grpc/errors.ts";
import { startServiceProcess, testToken, type ServiceProcess } from "@coursemesh/shared/testing/harness.ts";
import { startOtlpReceiver, type OtlpReceiver } from "@coursemesh/shared/testing/otlp.ts";
import { startSmtp, type TestSmtp } from "../../notifier/test/helpers.ts";
import { beartracks, call, eventually, monitorClient, scraperEnv, type ScraperEnv } from "./support.ts";

let env: ScraperEnv;
let smtp: TestSmtp;
let otlp: OtlpReceiver;
let notifier: ServiceProcess;
let scraper: ServiceProcess;
let client: ReturnType<typeof monitorClient>;
let notifierClient: NotificationServiceClient;
let erin: string;

const tracing = (otlpUrl: string) => ({ OTEL_EXPORTER_OTLP_ENDPOINT: otlpUrl, OTEL_EXPORTER_OTLP_PROTOCOL: "http/json", OTEL_BSP_SCHEDULE_DELAY: "200" });

beforeAll(async () => {
  otlp = startOtlpReceiver();
  smtp = await startSmtp();
  env = await scraperEnv();
  // One database and one NATS prefix for both services, as in a deployment (each has its own schema).
  notifier = await startServiceProcess("notifier", {
    env: {
      DATABASE_URL: env.db.url,
      NATS_PREFIX: env.prefix,
      NOTIFIER_SMTP_URL: smtp.url,
      NOTIFIER_PUBLIC_URL: "http://notifier.test",
      NOTIFIER_POLL_MS: "100",
      NOTIFIER_COALESCE_SECONDS: "0",
      ...tracing(otlp.url),
    },
  });
  scraper = await env.startScraper({ NOTIFIER_ADDR: notifier.grpcAddress, ...tracing(otlp.url) });
  client = monitorClient(scraper.grpcAddress);
  notifierClient = new NotificationServiceClient(notifier.grpcAddress, grpc.credentials.createInsecure());
  erin = await testToken("erin", ["student"], "erin@example.edu");
});

afterAll(async () => {
  client?.close();
  notifierClient?.close();
  if (notifier && notifier.process.exitCode === null) await notifier.stop();
  await env?.close();
  await smtp?.close();
  await otlp?.stop();
});

const subscriptions = (token: string) =>
  unary(notifierClient.listSubscriptions.bind(notifierClient), ListSubscriptionsRequest.fromPartial({}), { token }) as Promise<ListSubscriptionsResponse>;

describe("notify_emails", () => {
  test("become the caller's notifier subscriptions, in the caller's trace, and a seat change reaches the inbox", async () => {
    const created = await call(
      client,
      "createMonitor",
      { url: `${env.registrar.url}/pages/notify`, label: "CMPUT 201 LEC A1", intervalSeconds: 1, notifyEmails: ["erin@example.edu"], extractor: beartracks(), fetchMode: 0, isolation: 0 },
      erin,
    );
    const monitor = created.monitor!;
    expect(created.subscriptionIds).toHaveLength(1);
    const listed = await subscriptions(erin);
    expect(listed.subscriptions.map((s) => [s.id, s.channel, s.address, s.filter?.target, s.owner, s.status])).toEqual([
      [created.subscriptionIds[0]!, Channel.CHANNEL_EMAIL, "erin@example.edu", { $case: "monitorId", value: monitor.id }, "erin", SubscriptionStatus.SUBSCRIPTION_STATUS_ACTIVE],
    ]);

    await env.waitForEvent((e) => e.subject === `seats.changed.${monitor.id}`);
    const before = smtp.received.length;
    env.registrar.setSeats("notify", "CMPUT 201", "LEC A1", { open: 2, capacity: 30, waitlist: 0 });
    const change = await env.waitForEvent((e) => e.subject === `seats.changed.${monitor.id}` && e.data.current?.open === 2);
    // Events carry public facts, never the recipients.
    for (const event of env.events) expect(JSON.stringify(event.data)).not.toContain("@");
    const mail = await eventually(async () => smtp.received.slice(before).find((m) => m.to.includes("erin@example.edu") && m.text.includes("2 of 30")), 20_000, "the email");
    expect(mail.subject).toContain("CMPUT 201 LEC A1");

    // CreateMonitor → Subscribe is one trace; so is the check that saw the change → the notifier's work on it.
    const spans = await otlp.waitFor((all) => all.some((s) => s.service === "notifier" && s.name.endsWith("Subscribe") && s.kind === 2), 15_000);
    const create = spans.find((s) => s.service === "scraper" && s.name === "scraper.CreateMonitor")!;
    const subscribe = spans.find((s) => s.service === "notifier" && s.name.endsWith("Subscribe") && s.kind === 2)!;
    expect(subscribe.traceId).toBe(create.traceId);
    const checkTrace = change.headers.traceparent?.split("-")[1];
    expect(checkTrace).toBeDefined();
    const traced = await otlp.waitFor((all) => all.some((s) => s.service === "notifier" && s.traceId === checkTrace), 15_000);
    expect(traced.some((s) => s.service === "scraper" && s.name === "scraper.check" && s.traceId === checkTrace)).toBe(true);

    await call(client, "deleteMonitor", { id: monitor.id }, erin);
    expect((await subscriptions(erin)).subscriptions).toEqual([]);
  }, 60_000);

  test("with the notifier down, CreateMonitor is UNAVAILABLE and leaves nothing behind", async () => {
    const frank = await testToken("frank", ["student"], "frank@example.edu");
    expect(await notifier.stop()).toBe(0);
    let error;
    try {
      await call(
        client,
        "createMonitor",
        { url: `${env.registrar.url}/pages/down`, label: "CMPUT 201 LEC A1", intervalSeconds: 60, notifyEmails: ["frank@example.edu", "frank2@example.edu"], extractor: beartracks(), fetchMode: 0, isolation: 0 },
        frank,
      );
    } catch (e) {
      error = decodeGrpcError(e);
    }
    expect(error).toMatchObject({ code: grpc.status.UNAVAILABLE, reason: "NOTIFIER_UNAVAILABLE" });
    expect((await call(client, "listMonitors", { mode: 0, pageSize: 0, pageToken: "" }, frank)).monitors).toEqual([]);
  }, 30_000);
});
