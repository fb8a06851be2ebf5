// Toolchain go/no-go: the @nats-io v3 client (transport-node, jetstream, obj) under
// the pinned Bun against the local nats-server (127.0.0.1:4222, JetStream enabled).
//
// Every run uses its own stream, subjects, consumers and object-store bucket
// (random suffix) and deletes them in afterAll, so runs never see each other.
//
// Server version note: the machine runs nats-server 2.9.10. The v3 client gates
// newer features on the server version (nats-core's Features table): multiple
// consumer filter subjects, stream/consumer metadata, compression, subject
// transforms, first_seq and default consumer limits need 2.10; batch direct get
// and priority groups need 2.11; consumer reset needs 2.14. Nothing below uses
// them. The object store (2.6.3+), the new consumer-create API (2.9.0+), msgID
// dedupe, nak with delay and working() all work on 2.9.10.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { connect } from "@nats-io/transport-node";
import {
  AckPolicy,
  type Consumer,
  type JetStreamClient,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
} from "@nats-io/jetstream";
import { type ObjectStore, Objm } from "@nats-io/obj";

const NATS_SERVER = "127.0.0.1:4222";
const RUN = crypto.randomUUID().replaceAll("-", "").slice(0, 12);
const STREAM = `TOOLCHAIN_${RUN}`;
const SUBJECT = `toolchain${RUN}`;
const BUCKET = `toolchain_${RUN}`;

const nanos = (ms: number) => ms * 1_000_000;

type NatsConnection = Awaited<ReturnType<typeof connect>>;
let nc: NatsConnection;
let js: JetStreamClient;
let jsm: JetStreamManager;
let objectStore: ObjectStore | undefined;

beforeAll(async () => {
  try {
    nc = await connect({
      servers: NATS_SERVER,
      name: `toolchain-test-${RUN}`,
      timeout: 5_000,
      reconnect: false,
    });
  } catch (err) {
    throw new Error(
      `cannot reach nats-server at ${NATS_SERVER} (${err}). Start it with: start-stop-daemon --start --oknodo ` +
        "--background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server " +
        "-l /var/log/nats-server.log",
    );
  }
  js = jetstream(nc, { timeout: 5_000 });
  jsm = await jetstreamManager(nc, { timeout: 5_000 });
  await jsm.streams.add({
    name: STREAM,
    subjects: [`${SUBJECT}.>`],
    duplicate_window: nanos(60_000),
    // Safety net if afterAll never runs: messages expire by themselves.
    max_age: nanos(10 * 60_000),
  });
});

afterAll(async () => {
  try {
    if (objectStore) await objectStore.destroy().catch(() => {});
    if (jsm) await jsm.streams.delete(STREAM).catch(() => {});
  } finally {
    await nc?.close();
  }
});

/** A durable pull consumer with explicit acks on one subject of this run's stream. */
async function durablePullConsumer(name: string, subject: string, ackWaitMs = 30_000): Promise<Consumer> {
  await jsm.consumers.add(STREAM, {
    durable_name: name,
    ack_policy: AckPolicy.Explicit,
    filter_subject: subject,
    ack_wait: nanos(ackWaitMs),
  });
  return js.consumers.get(STREAM, name);
}

test("connects to the local nats-server with JetStream", async () => {
  expect(nc.info?.version).toBeTruthy();
  expect(nc.info?.jetstream).toBe(true);
  const account = await jsm.getAccountInfo();
  expect(account.streams).toBeGreaterThanOrEqual(1);
  const si = await jsm.streams.info(STREAM);
  expect(si.config.subjects).toEqual([`${SUBJECT}.>`]);
});

test("publish dedupe by msgID: same msgID twice -> one message, second PubAck duplicate", async () => {
  const subject = `${SUBJECT}.dedupe`;
  const first = await js.publish(subject, "one", { msgID: `dedupe-${RUN}` });
  const second = await js.publish(subject, "one again", { msgID: `dedupe-${RUN}` });
  const other = await js.publish(subject, "two", { msgID: `other-${RUN}` });

  expect(first.stream).toBe(STREAM);
  expect(first.duplicate).toBe(false);
  expect(second.duplicate).toBe(true);
  expect(second.seq).toBe(first.seq);
  expect(other.duplicate).toBe(false);
  expect(other.seq).toBe(first.seq + 1);

  const si = await jsm.streams.info(STREAM, { subjects_filter: subject });
  expect(si.state.subjects?.[subject]).toBe(2);
  const stored = await jsm.streams.getMessage(STREAM, { seq: first.seq });
  expect(stored?.string()).toBe("one");
});

test("durable pull consumer with explicit ack consumes everything", async () => {
  const subject = `${SUBJECT}.work`;
  for (let i = 0; i < 5; i++) await js.publish(subject, `job-${i}`);

  const consumer = await durablePullConsumer(`worker_${RUN}`, subject);
  const seen: string[] = [];
  const messages = await consumer.fetch({ max_messages: 5, expires: 2_000 });
  for await (const m of messages) {
    seen.push(m.string());
    expect(m.info.deliveryCount).toBe(1);
    expect(await m.ackAck({ timeout: 2_000 })).toBe(true);
  }
  expect(seen).toEqual(["job-0", "job-1", "job-2", "job-3", "job-4"]);

  const info = await consumer.info();
  expect(info.config.durable_name).toBe(`worker_${RUN}`);
  expect(info.num_ack_pending).toBe(0);
  expect(info.num_pending).toBe(0);
  expect(info.delivered.consumer_seq).toBe(5);
  expect(info.ack_floor.consumer_seq).toBe(5);

  // Durable: a fresh handle by name resumes where it left off (nothing left).
  const again = await js.consumers.get(STREAM, `worker_${RUN}`);
  expect(await again.next({ expires: 1_000 })).toBeNull();
});

test("nak with delay -> redelivery after the delay with redelivered/deliveryCount 2", async () => {
  const subject = `${SUBJECT}.nak`;
  await js.publish(subject, "retry me");
  const consumer = await durablePullConsumer(`nakker_${RUN}`, subject);

  const first = await consumer.next({ expires: 2_000 });
  expect(first).not.toBeNull();
  expect(first!.redelivered).toBe(false);
  expect(first!.info.deliveryCount).toBe(1);

  const NAK_DELAY_MS = 300;
  const nakAt = performance.now();
  first!.nak(NAK_DELAY_MS);

  const second = await consumer.next({ expires: 3_000 });
  const waited = performance.now() - nakAt;
  expect(second).not.toBeNull();
  expect(second!.string()).toBe("retry me");
  expect(second!.seq).toBe(first!.seq);
  expect(second!.redelivered).toBe(true);
  expect(second!.info.deliveryCount).toBe(2);
  expect(waited).toBeGreaterThanOrEqual(NAK_DELAY_MS - 50);
  expect(await second!.ackAck({ timeout: 2_000 })).toBe(true);
});

test("working() extends the ack deadline; without it the message is redelivered", async () => {
  const ACK_WAIT_MS = 500;
  const subject = `${SUBJECT}.slow`;
  const consumer = await durablePullConsumer(`slowpoke_${RUN}`, subject, ACK_WAIT_MS);

  // 1. Held 2.4x longer than ack_wait while calling working(): no redelivery.
  await js.publish(subject, "slow job");
  const msg = await consumer.next({ expires: 2_000 });
  expect(msg).not.toBeNull();
  const heartbeat = setInterval(() => msg!.working(), ACK_WAIT_MS / 4);
  try {
    // A pull is outstanding the whole time, so a redelivery would arrive here.
    const meanwhile = await consumer.next({ expires: 1_200 });
    expect(meanwhile).toBeNull();
  } finally {
    clearInterval(heartbeat);
  }
  expect(await msg!.ackAck({ timeout: 2_000 })).toBe(true);
  expect((await consumer.info()).num_redelivered).toBe(0);

  // 2. Control: the same consumer without working() redelivers after ack_wait.
  await js.publish(subject, "forgotten job");
  const forgotten = await consumer.next({ expires: 2_000 });
  expect(forgotten?.string()).toBe("forgotten job");
  const redelivered = await consumer.next({ expires: 3_000 });
  expect(redelivered?.string()).toBe("forgotten job");
  expect(redelivered!.redelivered).toBe(true);
  expect(redelivered!.info.deliveryCount).toBe(2);
  expect(await redelivered!.ackAck({ timeout: 2_000 })).toBe(true);
});

test("object store: ~1 MiB blob put (streamed) and read back identical", async () => {
  const objm = new Objm(nc);
  objectStore = await objm.create(BUCKET);

  // Not a multiple of the 128 KiB default chunk size, so the last chunk is partial.
  const data = new Uint8Array(randomBytes(1024 * 1024 + 12_345));
  const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

  const source = new ReadableStream<Uint8Array>({
    start(controller) {
      // Feed it in uneven pieces to exercise the chunker.
      for (let off = 0; off < data.length; off += 100_000) controller.enqueue(data.subarray(off, off + 100_000));
      controller.close();
    },
  });
  const info = await objectStore.put({ name: "blob.bin", description: "toolchain test blob" }, source);
  expect(info.size).toBe(data.length);
  expect(info.chunks).toBe(Math.ceil(data.length / (128 * 1024)));

  const result = await objectStore.get("blob.bin");
  expect(result).not.toBeNull();
  const got = new Uint8Array(await new Response(result!.data).arrayBuffer());
  // The client checks the SHA-256 digest while streaming: a mismatch errors the data
  // stream (so the read above would throw). Library quirk (@nats-io/obj 3.4.0): on
  // success `error` resolves to undefined, not the null its type declares.
  expect(await result!.error).toBeFalsy();
  // The stored digest is padded base64url of the SHA-256.
  const digest = createHash("sha256").update(data).digest("base64").replaceAll("+", "-").replaceAll("/", "_");
  expect(result!.info.digest).toBe(`SHA-256=${digest}`);
  expect(got.length).toBe(data.length);
  expect(sha(got)).toBe(sha(data));

  const blob = await objectStore.getBlob("blob.bin");
  expect(blob && Buffer.compare(Buffer.from(blob), Buffer.from(data))).toBe(0);

  const status = await objectStore.status();
  expect(status.bucket).toBe(BUCKET);

  expect(await objectStore.destroy()).toBe(true);
  objectStore = undefined;
  await expect(objm.open(BUCKET)).rejects.toThrow();
});
