/**
 * Subscriptions through the real notifier process: who may subscribe to what, idempotency, double
 * opt-in through the emailed link, webhooks, listing and unsubscribing, and bad input.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { status } from "@grpc/grpc-js";
import { Channel, SubscriptionStatus, type NotificationServiceClient } from "@coursemesh/proto/coursemesh/notifier/v1/notifier";
import { testToken, type ServiceProcess } from "@coursemesh/shared/testing/harness";
import { call, createWorld, failure, notifierClient, startNotifier, startSmtp, type NotifierWorld, type TestSmtp } from "./helpers.ts";

let world: NotifierWorld;
let smtp: TestSmtp;
let notifier: ServiceProcess;
let client: NotificationServiceClient;
let alice: string;
let bob: string;
let registrar: string;
let scraperService: string;
let operator: string;

const MONITOR = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
const COURSE = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a60";
const monitorFilter = { target: { $case: "monitorId", value: MONITOR } };

/** The notifier's own HTTP address for a link that names the configured public URL. */
const local = (link: string) => link.replace("http://notifier.test", notifier.httpUrl);

beforeAll(async () => {
  world = await createWorld();
  smtp = await startSmtp();
  notifier = await startNotifier(world, smtp);
  client = notifierClient(notifier.grpcAddress);
  alice = await testToken("alice", ["student"], "Alice@Example.edu");
  bob = await testToken("bob", ["student"], "bob@example.edu");
  registrar = await testToken("reg-1", ["registrar"], "registrar@example.edu");
  scraperService = await testToken("scraper", ["service"]);
  operator = await testToken("op-1", ["operator"]);
});

afterAll(async () => {
  client?.close();
  await notifier?.stop();
  await smtp?.close();
  await world?.cleanup();
});

describe("Subscribe", () => {
  test("your own address (the token's email) is ACTIVE at once; the call is idempotent", async () => {
    const request = { channel: Channel.CHANNEL_EMAIL, address: "alice@example.edu", filter: monitorFilter };
    const first = await call(client, "subscribe", request, alice);
    expect(first.created).toBe(true);
    expect(first.subscription.status).toBe(SubscriptionStatus.SUBSCRIPTION_STATUS_ACTIVE);
    expect(first.subscription.owner).toBe("alice");
    expect(first.subscription.confirmedAt).toBeInstanceOf(Date);
    expect(first.subscription.filter.target).toEqual({ $case: "monitorId", value: MONITOR });

    // Same channel, address (any case) and filter: the same subscription, not a second one.
    const again = await call(client, "subscribe", { ...request, address: "  ALICE@example.edu " }, alice);
    expect(again.created).toBe(false);
    expect(again.subscription.id).toBe(first.subscription.id);
  });

  test("someone else's address stays PENDING until its owner confirms through the emailed link", async () => {
    const sent = smtp.received.length;
    const reply = await call(client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: "friend@example.org", filter: monitorFilter }, alice);
    expect(reply.subscription.status).toBe(SubscriptionStatus.SUBSCRIPTION_STATUS_PENDING);
    expect(reply.subscription.confirmedAt).toBeUndefined();

    const [email] = (await smtp.waitFor(sent + 1)).slice(sent);
    expect(email!.to).toEqual(["friend@example.org"]);
    expect(email!.subject).toBe("Confirm your coursemesh notifications");
    expect(email!.text).toContain('as "alice"');
    expect(email!.text).toContain(`seat changes of monitor ${MONITOR}`);
    const link = /Confirm: (\S+)/.exec(email!.text)?.[1];
    expect(link).toStartWith("http://notifier.test/v1/subscriptions/confirm?token=");

    // Asking again while the link is valid sends no second email (no spam relay).
    const again = await call(client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: "friend@example.org", filter: monitorFilter }, alice);
    expect(again.created).toBe(false);

    // A GET (what a mail scanner does) changes nothing; the button's POST confirms.
    const page = await fetch(local(link!));
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('<button type="submit"');
    let listed = await call(client, "listSubscriptions", {}, alice);
    expect(listed.subscriptions.find((s: any) => s.id === reply.subscription.id).status).toBe(SubscriptionStatus.SUBSCRIPTION_STATUS_PENDING);

    const token = new URL(link!).searchParams.get("token")!;
    const confirmed = await fetch(`${notifier.httpUrl}/v1/subscriptions/confirm`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ token }),
    });
    expect(confirmed.status).toBe(200);
    expect(await confirmed.text()).toContain("friend@example.org will get seat changes");
    listed = await call(client, "listSubscriptions", {}, alice);
    expect(listed.subscriptions.find((s: any) => s.id === reply.subscription.id).status).toBe(SubscriptionStatus.SUBSCRIPTION_STATUS_ACTIVE);

    // ConfirmSubscription with the same token is a no-op that returns it (no bearer token needed).
    const viaRpc = await call(client, "confirmSubscription", { token });
    expect(viaRpc.subscription.status).toBe(SubscriptionStatus.SUBSCRIPTION_STATUS_ACTIVE);
    await smtp.waitFor(sent + 1);
    expect(smtp.received.length).toBe(sent + 1);
  });

  test("a made-up confirmation token is NOT_FOUND CONFIRMATION_TOKEN_INVALID", async () => {
    const error = await failure(call(client, "confirmSubscription", { token: "not-a-real-token" }));
    expect(error.code).toBe(status.NOT_FOUND);
    expect(error.reason).toBe("CONFIRMATION_TOKEN_INVALID");
    const page = await fetch(`${notifier.httpUrl}/v1/subscriptions/confirm?token=nope`, { method: "POST" });
    expect(page.status).toBe(404);
  });

  test("a webhook gets a signing secret once; has_secret afterwards", async () => {
    const request = { channel: Channel.CHANNEL_WEBHOOK, address: "http://127.0.0.1:9/hooks", filter: monitorFilter };
    const reply = await call(client, "subscribe", request, alice);
    expect(reply.created).toBe(true);
    expect(reply.secret).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    expect(reply.subscription.hasSecret).toBe(true);
    expect(reply.subscription.status).toBe(SubscriptionStatus.SUBSCRIPTION_STATUS_ACTIVE);
    const again = await call(client, "subscribe", request, alice);
    expect(again.secret).toBe("");
    expect(again.subscription.id).toBe(reply.subscription.id);

    const own = await call(client, "subscribe", { ...request, address: "http://127.0.0.1:9/other", secret: "my-own-secret-of-24-chars" }, alice);
    expect(own.secret).toBe("");
    expect(own.subscription.hasSecret).toBe(true);
  });

  test("a service subscribes on behalf of the monitor's owner, who then owns it", async () => {
    const reply = await call(
      client,
      "subscribe",
      { channel: Channel.CHANNEL_EMAIL, address: "bob@example.edu", filter: monitorFilter, owner: "bob", ownerEmail: "bob@example.edu" },
      scraperService,
    );
    expect(reply.subscription.owner).toBe("bob");
    expect(reply.subscription.status).toBe(SubscriptionStatus.SUBSCRIPTION_STATUS_ACTIVE);
    const bobs = await call(client, "listSubscriptions", {}, bob);
    expect(bobs.subscriptions.map((s: any) => s.id)).toContain(reply.subscription.id);
    // A student cannot.
    const error = await failure(call(client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: "x@example.edu", filter: monitorFilter, owner: "bob" }, alice));
    expect(error.code).toBe(status.PERMISSION_DENIED);
    expect(error.reason).toBe("FILTER_NOT_ALLOWED");
  });

  test("students hear only their own enrollment outcomes; registrars watch courses", async () => {
    const own = await call(client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: "alice@example.edu", filter: { target: { $case: "studentId", value: "alice" } } }, alice);
    expect(own.subscription.status).toBe(SubscriptionStatus.SUBSCRIPTION_STATUS_ACTIVE);
    const someoneElse = await failure(
      call(client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: "alice@example.edu", filter: { target: { $case: "studentId", value: "bob" } } }, alice),
    );
    expect(someoneElse.code).toBe(status.PERMISSION_DENIED);
    expect(someoneElse.reason).toBe("FILTER_NOT_ALLOWED");
    const course = await failure(
      call(client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: "alice@example.edu", filter: { target: { $case: "courseId", value: COURSE } } }, alice),
    );
    expect(course.reason).toBe("FILTER_NOT_ALLOWED");
    const watch = await call(client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: "registrar@example.edu", filter: { target: { $case: "courseId", value: COURSE } } }, registrar);
    expect(watch.subscription.status).toBe(SubscriptionStatus.SUBSCRIPTION_STATUS_ACTIVE);
  });

  describe("bad input gets INVALID_ARGUMENT with the reason and the field, and writes nothing", () => {
    const cases: [string, object, string, string][] = [
      ["no channel", { address: "a@example.edu", filter: monitorFilter }, "CHANNEL_REQUIRED", "channel"],
      ["not an email", { channel: Channel.CHANNEL_EMAIL, address: "not-an-email", filter: monitorFilter }, "ADDRESS_INVALID", "address"],
      ["header injection", { channel: Channel.CHANNEL_EMAIL, address: "a@example.edu\r\nBcc: x@evil.test", filter: monitorFilter }, "ADDRESS_INVALID", "address"],
      ["no filter", { channel: Channel.CHANNEL_EMAIL, address: "alice@example.edu" }, "FILTER_REQUIRED", "filter"],
      ["bad monitor id", { channel: Channel.CHANNEL_EMAIL, address: "alice@example.edu", filter: { target: { $case: "monitorId", value: "42" } } }, "INVALID_ID", "filter.monitor_id"],
      ["ftp webhook", { channel: Channel.CHANNEL_WEBHOOK, address: "ftp://example.com/x", filter: monitorFilter }, "ADDRESS_INVALID", "address"],
      ["webhook that is not a URL", { channel: Channel.CHANNEL_WEBHOOK, address: "hooks here", filter: monitorFilter }, "ADDRESS_INVALID", "address"],
      ["short secret", { channel: Channel.CHANNEL_WEBHOOK, address: "http://127.0.0.1:9/x", filter: monitorFilter, secret: "short" }, "SECRET_INVALID", "secret"],
      ["secret on email", { channel: Channel.CHANNEL_EMAIL, address: "alice@example.edu", filter: monitorFilter, secret: "0123456789abcdef0123" }, "SECRET_INVALID", "secret"],
    ];
    for (const [name, request, reason, field] of cases) {
      test(name, async () => {
        const before = (await call(client, "listSubscriptions", { pageSize: 1000 }, alice)).subscriptions.length;
        const error = await failure(call(client, "subscribe", request, alice));
        expect(error.code).toBe(status.INVALID_ARGUMENT);
        expect(error.reason).toBe(reason);
        expect(error.fieldViolations.map((v) => v.field)).toContain(field);
        expect((await call(client, "listSubscriptions", { pageSize: 1000 }, alice)).subscriptions.length).toBe(before);
      });
    }
  });

  test("no token is UNAUTHENTICATED", async () => {
    const error = await failure(call(client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: "a@example.edu", filter: monitorFilter }));
    expect(error.code).toBe(status.UNAUTHENTICATED);
    expect(error.reason).toBe("TOKEN_MISSING");
  });
});

describe("ListSubscriptions and Unsubscribe", () => {
  test("each caller sees their own, newest first, in pages; operators see all", async () => {
    const mine = await call(client, "listSubscriptions", { pageSize: 1000 }, alice);
    expect(mine.subscriptions.length).toBeGreaterThanOrEqual(5);
    expect(mine.subscriptions.every((s: any) => s.owner === "alice")).toBe(true);
    const ids = mine.subscriptions.map((s: any) => s.id);
    expect([...ids].sort().reverse()).toEqual(ids);

    const pages: string[] = [];
    let pageToken = "";
    do {
      const page = await call(client, "listSubscriptions", { pageSize: 2, pageToken }, alice);
      expect(page.subscriptions.length).toBeLessThanOrEqual(2);
      pages.push(...page.subscriptions.map((s: any) => s.id));
      pageToken = page.nextPageToken;
    } while (pageToken);
    expect(pages).toEqual(ids);

    const webhooks = await call(client, "listSubscriptions", { channel: Channel.CHANNEL_WEBHOOK }, alice);
    expect(webhooks.subscriptions.every((s: any) => s.channel === Channel.CHANNEL_WEBHOOK)).toBe(true);
    const byStudent = await call(client, "listSubscriptions", { filter: { target: { $case: "studentId", value: "alice" } } }, alice);
    expect(byStudent.subscriptions.length).toBe(1);

    const all = await call(client, "listSubscriptions", { pageSize: 1000 }, operator);
    expect(new Set(all.subscriptions.map((s: any) => s.owner))).toEqual(new Set(["alice", "bob", "reg-1"]));
  });

  test("a page token from another query is INVALID_PAGE_TOKEN", async () => {
    const page = await call(client, "listSubscriptions", { pageSize: 1 }, alice);
    const error = await failure(call(client, "listSubscriptions", { pageSize: 1, pageToken: page.nextPageToken, channel: Channel.CHANNEL_EMAIL }, alice));
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    expect(error.reason).toBe("INVALID_PAGE_TOKEN");
  });

  test("owners unsubscribe their own; someone else's is NOT_FOUND; a bad id is INVALID_ID", async () => {
    const created = await call(client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: "alice@example.edu", filter: { target: { $case: "jobId", value: COURSE } } }, alice);
    const bobTries = await failure(call(client, "unsubscribe", { id: created.subscription.id }, bob));
    expect(bobTries.code).toBe(status.NOT_FOUND);
    expect(bobTries.reason).toBe("SUBSCRIPTION_NOT_FOUND");
    await call(client, "unsubscribe", { id: created.subscription.id }, alice);
    const gone = await failure(call(client, "unsubscribe", { id: created.subscription.id }, alice));
    expect(gone.reason).toBe("SUBSCRIPTION_NOT_FOUND");
    const bad = await failure(call(client, "unsubscribe", { id: "nope" }, alice));
    expect(bad.code).toBe(status.INVALID_ARGUMENT);
    expect(bad.reason).toBe("INVALID_ID");
  });
});
