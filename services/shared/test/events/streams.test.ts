import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, RetentionPolicy, type JetStreamManager } from "@nats-io/jetstream";
import {
  deleteStreams,
  provisionStreams,
  STREAM_DEFINITIONS,
  STREAM_NAMES,
  streamForSubject,
  streamName,
  subjectMatches,
  subjectsOverlap,
} from "../../src/events/index.ts";
import { TEST_NATS_URL, testNatsPrefix } from "../../src/testing/harness.ts";
import { TEST_STREAM_LIMITS } from "./support.ts";

const prefix = testNatsPrefix();
const limits = Object.fromEntries(STREAM_NAMES.map((s) => [s, TEST_STREAM_LIMITS]));
let nc: NatsConnection;
let jsm: JetStreamManager;

beforeAll(async () => {
  nc = await connect({ servers: TEST_NATS_URL });
  jsm = await jetstreamManager(nc);
});

afterAll(async () => {
  await deleteStreams(jsm, prefix).catch(() => {});
  await nc?.close();
});

describe("subjects", () => {
  test("pattern matching follows NATS wildcards", () => {
    expect(subjectMatches("seats.changed.*", "seats.changed.m1")).toBe(true);
    expect(subjectMatches("seats.changed.*", "seats.changed.m1.x")).toBe(false);
    expect(subjectMatches("seats.>", "seats.changed.m1")).toBe(true);
    expect(subjectMatches("seats.>", "seats")).toBe(false);
    expect(subjectsOverlap("seats.>", "seats.changed.*")).toBe(true);
    expect(subjectsOverlap("seats.*.x", "seats.changed.*")).toBe(true);
    expect(subjectsOverlap("seats.changed.*", "seats.health.*")).toBe(false);
    expect(subjectsOverlap("work.ingest", "work.ingest.x")).toBe(false);
  });

  test("no two streams' subjects overlap", () => {
    for (const a of STREAM_NAMES) {
      for (const b of STREAM_NAMES) {
        if (a === b) continue;
        for (const x of STREAM_DEFINITIONS[a].subjects) {
          for (const y of STREAM_DEFINITIONS[b].subjects) expect({ a, x, b, y, overlap: subjectsOverlap(x, y) }).toMatchObject({ overlap: false });
        }
      }
    }
  });

  test("every subject of the design maps to its stream; unknown or malformed ones are refused", () => {
    expect(streamForSubject("seats.changed.0190a1b2-0000-7000-8000-000000000001")).toBe("SEATS");
    expect(streamForSubject("seats.health.m1")).toBe("SEATS");
    expect(streamForSubject("enrollment.decided.c1")).toBe("ENROLLMENT");
    expect(streamForSubject("enrollment.promoted.c1")).toBe("ENROLLMENT");
    expect(streamForSubject("enrollment.dropped.c1")).toBe("ENROLLMENT");
    expect(streamForSubject("ingest.job.completed.j1")).toBe("INGEST");
    expect(streamForSubject("ingest.job.failed.j1")).toBe("INGEST");
    expect(streamForSubject("ingest.course.created.c1")).toBe("INGEST");
    expect(streamForSubject("work.ingest")).toBe("WORK");
    expect(streamForSubject("dlq.notifier.seats")).toBe("DLQ");
    expect(() => streamForSubject("seats.typo.m1")).toThrow(/belongs to no stream/);
    expect(() => streamForSubject("seats.changed.*")).toThrow(/no wildcards/);
    expect(() => streamForSubject("seats.changed.a b")).toThrow(/no wildcards/);
  });
});

test("provisioning is idempotent and creates the five streams with limits and a duplicate window", async () => {
  const first = await provisionStreams(jsm, prefix, STREAM_NAMES, { limits });
  const second = await provisionStreams(jsm, prefix, STREAM_NAMES, { limits });
  expect(second.map((s) => s.config)).toEqual(first.map((s) => s.config));
  for (const info of second) {
    expect(info.config.max_age).toBeGreaterThan(0);
    expect(info.config.max_bytes).toBe(TEST_STREAM_LIMITS.maxBytes!);
    expect(info.config.duplicate_window).toBeGreaterThan(0);
  }
  const byName = Object.fromEntries(second.map((s) => [s.config.name, s.config]));
  expect(byName[streamName(prefix, "SEATS")]!.subjects).toEqual([`${prefix}.seats.changed.*`, `${prefix}.seats.health.*`]);
  expect(byName[streamName(prefix, "WORK")]!.retention).toBe(RetentionPolicy.Workqueue);
  expect(byName[streamName(prefix, "SEATS")]!.retention).toBe(RetentionPolicy.Limits);
  expect(streamName(prefix, "SEATS")).toBe(`${prefix.toUpperCase()}_SEATS`);
  expect(streamName("", "SEATS")).toBe("SEATS");

  // A changed limit is applied to the live stream.
  const [updated] = await provisionStreams(jsm, prefix, ["SEATS"], { limits: { SEATS: { ...TEST_STREAM_LIMITS, maxAgeMs: 30 * 60 * 1000 } } });
  expect(updated!.config.max_age).toBe(30 * 60 * 1000 * 1_000_000);

  // A message lands in exactly the stream its subject names.
  const js = jetstream(nc);
  const samples: Record<string, string> = {
    SEATS: "seats.changed.m1",
    ENROLLMENT: "enrollment.decided.c1",
    INGEST: "ingest.job.completed.j1",
    WORK: "work.ingest",
    DLQ: "dlq.notifier.seats",
  };
  for (const [stream, subject] of Object.entries(samples)) {
    const ack = await js.publish(`${prefix}.${subject}`, "{}");
    expect(ack.stream).toBe(streamName(prefix, stream as (typeof STREAM_NAMES)[number]));
  }
});
