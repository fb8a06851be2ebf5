/**
 * Events that wait while the notifier is down are fanned out in batches when it comes back (one
 * transaction, one INSERT per batch): each student gets exactly their own email, a registrar
 * watching the course gets one per outcome, and an event Postgres cannot store (a NUL character
 * in its text) is isolated from its batch and dead-lettered at once, the rest of the batch unharmed.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Channel, type NotificationServiceClient } from "@coursemesh/proto/coursemesh/notifier/v1/notifier";
import { testToken, type ServiceProcess } from "@coursemesh/shared/testing/harness";
import { EnrollmentStatus, publishDecided } from "./events.ts";
import { call, createWorld, dlqMessage, notifierClient, startNotifier, startSmtp, type NotifierWorld, type TestSmtp } from "./helpers.ts";

const STUDENTS = 40;
let world: NotifierWorld;
let smtp: TestSmtp;
const running: ServiceProcess[] = [];
const clients: NotificationServiceClient[] = [];

beforeAll(async () => {
  world = await createWorld();
  smtp = await startSmtp();
});

afterAll(async () => {
  for (const client of clients) client.close();
  for (const notifier of running) if (notifier.process.exitCode === null) await notifier.stop();
  await smtp?.close();
  await world?.cleanup();
});

async function start() {
  const notifier = await startNotifier(world, smtp);
  running.push(notifier);
  const client = notifierClient(notifier.grpcAddress);
  clients.push(client);
  return { notifier, client };
}

test("a backlog is fanned out in batches: one email per student and outcome; a poison event is dead-lettered alone", async () => {
  const students = Array.from({ length: STUDENTS }, (_, i) => `batch-student-${i}`);
  const course = Bun.randomUUIDv7();
  const first = await start();
  const registrar = await testToken("reg-batch", ["registrar"], "registrar@example.edu");
  await call(first.client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: "registrar@example.edu", filter: { target: { $case: "courseId", value: course } } }, registrar);
  for (const student of students) {
    const token = await testToken(student, ["student"], `${student}@example.edu`);
    await call(first.client, "subscribe", { channel: Channel.CHANNEL_EMAIL, address: `${student}@example.edu`, filter: { target: { $case: "studentId", value: student } } }, token);
  }
  expect(await first.notifier.stop()).toBe(0);

  // While it is down: the poison event first (so it shares the first batch), then one outcome per student.
  const poison = Bun.randomUUIDv7();
  await world.publish(
    `enrollment.decided.${course}`,
    "coursemesh.events.v1.EnrollmentDecided",
    { eventId: poison, courseId: course, courseCode: "CMPUT 201 LEC A1", courseTitle: "Practical\u0000Programming", studentId: students[0], status: "ENROLLMENT_STATUS_ENROLLED", aggregateVersion: 1 },
    { id: course, version: 1 },
  );
  for (const [i, student] of students.entries()) await publishDecided(world, course, i + 2, student, EnrollmentStatus.ENROLLMENT_STATUS_ENROLLED);

  const second = await start();
  const operator = await testToken("op-batch", ["operator"]);
  await smtp.waitFor(2 * STUDENTS, 30_000);
  await Bun.sleep(300);
  // Each student exactly one email, their own; the registrar one per outcome.
  for (const student of students) {
    const mails = smtp.received.filter((m) => m.to.includes(`${student}@example.edu`));
    expect(mails.map((m) => m.subject)).toEqual(["Enrolled: CMPUT 201 LEC A1"]);
  }
  expect(smtp.received.filter((m) => m.to.includes("registrar@example.edu"))).toHaveLength(STUDENTS);
  expect(smtp.received).toHaveLength(2 * STUDENTS);
  const history = (await call(second.client, "listNotifications", { pageSize: 1000, courseId: course }, operator)).notifications as any[];
  expect(history).toHaveLength(2 * STUDENTS);
  expect(history.some((n) => n.eventId === poison)).toBe(false);

  // The poison event failed its batch, was decided alone and went to the DLQ on its first delivery.
  expect(second.notifier.logs.some((line) => line.msg === "batch failed; deciding its events one at a time")).toBe(true);
  const dead = await dlqMessage(world, "dlq.notifier.notifier-enrollment");
  expect(dead.json<{ eventId: string }>().eventId).toBe(poison);
  expect(dead.header.get("Coursemesh-Dead-Letter-Reason")).toBe("poison");
  expect(dead.header.get("Coursemesh-Deliveries")).toBe("1");
  expect(dead.header.get("Coursemesh-Error")).toContain("the event cannot be stored");
  expect(await second.notifier.stop()).toBe(0);
}, 90_000);
