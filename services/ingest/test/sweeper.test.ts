/**
 * The sweeper against real Postgres and the real object store: blobs no job refers to go after
 * their grace period, referenced and recently touched ones stay, objects without a row go, and a
 * job whose worker vanished is queued again. One replica sweeps at a time.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { Objm } from "@nats-io/obj";
import { advisoryKey, createSql, migrate, PLATFORM_MIGRATIONS, type Sql } from "@coursemesh/shared/db.ts";
import { createLogger } from "@coursemesh/shared/logger.ts";
import { createTestDatabase, testNatsPrefix, TEST_NATS_URL, type TestDatabase } from "@coursemesh/shared/testing/harness.ts";
import { documentsBucket, openDocumentStore, type DocumentStore } from "../src/document-store.ts";
import { insertJob, touchBlob } from "../src/store.ts";
import { sweepOnce } from "../src/sweeper.ts";

let db: TestDatabase;
let sql: Sql;
let nats: NatsConnection;
let documents: DocumentStore;
let prefix: string;
const logger = createLogger("ingest", "silent");

beforeAll(async () => {
  db = await createTestDatabase();
  sql = createSql({ url: db.url, schema: "ingest", max: 4 });
  await migrate(sql, "ingest", [PLATFORM_MIGRATIONS, { name: "ingest", dir: new URL("../migrations", import.meta.url).pathname }]);
  prefix = testNatsPrefix();
  nats = await connect({ servers: TEST_NATS_URL });
  documents = await openDocumentStore(nats, prefix, 64 * 1024 * 1024);
}, 30_000);

afterAll(async () => {
  await new Objm(nats)
    .open(documentsBucket(prefix))
    .then((store) => store.destroy())
    .catch(() => {});
  await nats?.close();
  await sql?.end();
  await db?.drop();
});

/** Stores a blob (row first, then object, as an upload does); returns its hash. */
async function storeBlob(content: string, withRow = true): Promise<string> {
  const bytes = Buffer.from(`%PDF-1.7\n${content}`);
  const sha256 = new Bun.CryptoHasher("sha256").update(bytes).digest("hex");
  if (withRow) await touchBlob(sql, sha256, bytes.length);
  await documents.put(sha256, [bytes], bytes.length);
  return sha256;
}

const stored = async () => new Set((await documents.list()).map((o) => o.sha256));
const rows = async () => new Set((await sql`select sha256 from blobs`).map((r) => r.sha256 as string));

async function newJob(sha256: string, owner = "alice"): Promise<string> {
  const id = Bun.randomUUIDv7();
  await sql.begin((tx) =>
    insertJob(tx, {
      id,
      owner,
      courseTitle: "Swept",
      idempotencyKey: "",
      fingerprint: "f",
      traceparent: null,
      documents: [{ filename: "a.pdf", contentType: "application/pdf", sizeBytes: 10, sha256 }],
    }),
  );
  return id;
}

describe("sweeper", () => {
  test("removes unreferenced blobs after their grace period; keeps referenced and recently touched ones; removes objects without a row", async () => {
    const referenced = await storeBlob("referenced");
    await newJob(referenced);
    const abandoned = await storeBlob("abandoned upload");
    const fresh = await storeBlob("upload in progress");
    const orphan = await storeBlob("object without a row", false);
    await sql`update blobs set touched_at = now() - interval '2 hours' where sha256 in ${sql([referenced, abandoned])}`;

    const first = await sweepOnce({ sql, documents, logger, blobGraceMs: 60 * 60 * 1000, abandonedAfterMs: 60_000 });
    expect(first).toMatchObject({ ran: true, blobsRemoved: 1, orphansRemoved: 0 });
    expect(await stored()).toEqual(new Set([referenced, fresh, orphan]));
    expect(await rows()).toEqual(new Set([referenced, fresh]));

    // With no grace left, the untouched upload and the orphan go too; the referenced blob never does.
    await Bun.sleep(20);
    const second = await sweepOnce({ sql, documents, logger, blobGraceMs: 0, abandonedAfterMs: 60_000 });
    expect(second).toMatchObject({ ran: true, blobsRemoved: 1, orphansRemoved: 1 });
    expect(await stored()).toEqual(new Set([referenced]));
    expect(await rows()).toEqual(new Set([referenced]));
  });

  test("a job whose lease ran out long ago is queued again with a new work item", async () => {
    const id = await newJob(await storeBlob("stuck"));
    await sql`update jobs set status = 'PROCESSING', attempts = 1, lease_owner = 'gone', lease_until = now() - interval '1 hour', updated_at = clock_timestamp() where id = ${id}`;
    const live = await newJob(await storeBlob("live"));
    await sql`update jobs set status = 'PROCESSING', attempts = 1, lease_owner = 'here', lease_until = now() + interval '1 minute', updated_at = clock_timestamp() where id = ${live}`;

    const result = await sweepOnce({ sql, documents, logger, blobGraceMs: 60 * 60 * 1000, abandonedAfterMs: 60_000 });
    expect(result.jobsRequeued).toBe(1);
    const [job] = await sql`select status, attempts, lease_owner, message from jobs where id = ${id}`;
    expect(job).toEqual({ status: "PENDING", attempts: 1, lease_owner: null, message: "queued again: its worker stopped answering" });
    const [item] = await sql`select subject, payload from outbox where aggregate_id = ${id}`;
    expect(item?.subject).toBe("work.ingest");
    expect(item?.payload).toMatchObject({ jobId: id, generation: 1 });
    const [untouched] = await sql`select status from jobs where id = ${live}`;
    expect(untouched?.status).toBe("PROCESSING");
  });

  test("while another replica sweeps (holds the sweep lock), a sweep does nothing", async () => {
    await sql.begin(async (tx) => {
      await tx`select pg_advisory_xact_lock(${advisoryKey("coursemesh.ingest.sweep").toString()}::bigint)`;
      const result = await sweepOnce({ sql, documents, logger, blobGraceMs: 0, abandonedAfterMs: 0 });
      expect(result).toEqual({ ran: false, blobsRemoved: 0, orphansRemoved: 0, jobsRequeued: 0 });
    });
    expect((await sweepOnce({ sql, documents, logger, blobGraceMs: 60_000, abandonedAfterMs: 60_000 })).ran).toBe(true);
  });
});
