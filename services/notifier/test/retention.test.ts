/**
 * History retention against a running notifier: finished notifications older than the retention
 * are deleted in batches (more than one batch here), recent and PENDING ones stay, a row another
 * transaction holds is skipped until it is free, the history a user lists no longer shows the old
 * ones, and `notifier_history_pruned_total` counts what went, by status. The configured 3 days is
 * shorter than the redelivery window, so the notifier says so and keeps 15 days.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { NotificationServiceClient } from "@coursemesh/proto/coursemesh/notifier/v1/notifier";
import { createSql, type Sql } from "@coursemesh/shared/db.ts";
import { testToken, type ServiceProcess } from "@coursemesh/shared/testing/harness";
import { call, createWorld, eventually, notifierClient, startNotifier, startSmtp, type NotifierWorld, type TestSmtp } from "./helpers.ts";

const OWNER = "retention-student";
const BULK = 2_500;
let world: NotifierWorld;
let smtp: TestSmtp;
let notifier: ServiceProcess;
let client: NotificationServiceClient;
let sql: Sql;

beforeAll(async () => {
  world = await createWorld();
  smtp = await startSmtp();
  notifier = await startNotifier(world, smtp, { NOTIFIER_HISTORY_RETENTION_DAYS: "3", NOTIFIER_HISTORY_PRUNE_INTERVAL_SECONDS: "1" });
  client = notifierClient(notifier.grpcAddress);
  sql = createSql({ url: world.db.url, schema: "notifier", max: 2 });
});

afterAll(async () => {
  client?.close();
  if (notifier?.process.exitCode === null) await notifier.stop();
  await sql?.end();
  await smtp?.close();
  await world?.cleanup();
});

/** Writes one history row for OWNER, created `createdDaysAgo` days ago. */
async function row(status: string, createdDaysAgo: number, options: { sentDaysAgo?: number; owner?: string } = {}): Promise<string> {
  const id = Bun.randomUUIDv7();
  await sql`
    insert into deliveries (id, event_type, owner, channel, recipient, subject, payload, status, created_at, sent_at, next_attempt_at)
    values (${id}, 'seats.changed', ${options.owner ?? OWNER}, 'EMAIL', 'retention@example.edu', 'Seats open', '{}'::jsonb, ${status},
            now() - make_interval(days => ${createdDaysAgo}),
            ${status === "SENT" ? sql`now() - make_interval(days => ${options.sentDaysAgo ?? createdDaysAgo})` : null},
            ${status === "PENDING" ? sql`now() + interval '1 year'` : null})`;
  return id;
}

async function prunedCounts(): Promise<Record<string, number>> {
  const text = await (await fetch(`${notifier.httpUrl}/metrics`)).text();
  const counts: Record<string, number> = {};
  for (const match of text.matchAll(/^notifier_history_pruned_total\{[^}]*\bstatus="(\w+)"[^}]*\} (\d+)$/gm)) counts[match[1]!] = Number(match[2]);
  return counts;
}

test("old finished history is deleted in batches; recent, pending and held rows stay; the metric counts it", async () => {
  const oldIds = [await row("SENT", 40), await row("FAILED", 40), await row("COALESCED", 40), await row("SUPPRESSED", 40)];
  const kept = [
    await row("SENT", 1),
    // Within the 15 days kept (the configured 3 would have deleted it).
    await row("FAILED", 10),
    // Created long ago but sent recently (after many retries): its age is from the send.
    await row("SENT", 40, { sentDaysAgo: 2 }),
    // Still to be sent: never pruned, however old.
    await row("PENDING", 40),
  ];
  await sql`
    insert into deliveries (id, event_type, owner, channel, recipient, subject, payload, status, created_at, sent_at)
    select gen_random_uuid(), 'seats.changed', 'bulk', 'EMAIL', 'bulk-' || n || '@example.edu', 'Seats open', '{}'::jsonb, 'SENT',
           now() - interval '100 days', now() - interval '100 days'
    from generate_series(1, ${BULK}) as n`;

  // Another transaction holds one old row (as a second replica's prune would): it is skipped, not waited for.
  let held = "";
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let locked!: () => void;
  const isLocked = new Promise<void>((resolve) => (locked = resolve));
  const holding = sql.begin(async (tx) => {
    // A sweep between the insert and the lock may take the row first; then write another.
    do held = await row("SENT", 50);
    while ((await tx`select id from deliveries where id = ${held} for update`).length === 0);
    locked();
    await released;
  });
  await isLocked;

  await eventually(async () => {
    const [counted] = await sql<{ left: number }[]>`select count(*)::int as left from deliveries where owner = 'bulk' or id = any(${oldIds}::uuid[])`;
    return counted!.left === 0;
  }, 20_000, "old finished rows to be pruned");
  expect((await sql`select id from deliveries where id = ${held}`).length).toBe(1);
  const remaining = await sql<{ id: string }[]>`select id from deliveries where owner = ${OWNER}`;
  expect(remaining.map((r) => r.id).sort()).toEqual([...kept, held].sort());

  release();
  await holding;
  await eventually(async () => (await sql`select id from deliveries where id = ${held}`).length === 0, 20_000, "the held row to be pruned once free");

  // What the student sees in their history: exactly the kept notifications.
  const token = await testToken(OWNER, ["student"], "retention@example.edu");
  const listed = await call(client, "listNotifications", {}, token);
  expect(listed.notifications.map((n: { id: string }) => n.id).sort()).toEqual([...kept].sort());

  expect(await prunedCounts()).toEqual({ SENT: BULK + 2, FAILED: 1, COALESCED: 1, SUPPRESSED: 1 });
  expect(notifier.logs.some((l) => String(l.msg).startsWith("NOTIFIER_HISTORY_RETENTION_DAYS=3 is shorter") && l.retentionDays === 15)).toBe(true);
});
