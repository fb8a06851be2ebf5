/**
 * What the allocator's tests share: a database and NATS prefix per file, allocator processes on
 * them, a promise-style gRPC client, tokens and error decoding.
 */
import * as grpc from "@grpc/grpc-js";
import { jetstream, jetstreamManager, type JsMsg } from "@nats-io/jetstream";
import { connect as connectNats } from "@nats-io/transport-node";
import postgres from "postgres";
import {
  CreateCourseRequest,
  DropRequest,
  EnrollmentServiceClient,
  EnrollRequest,
  GetCourseRequest,
  GetRequestRequest,
  ListCoursesRequest,
  ListEnrollmentsRequest,
  ListRequestsRequest,
  ListWaitlistRequest,
  UpdateCourseRequest,
  WatchRequestRequest,
  type WatchRequestResponse,
} from "@coursemesh/proto/coursemesh/allocator/v1/allocator";
import type { Sql } from "@coursemesh/shared/db.ts";
import { deleteStreams, streamName } from "@coursemesh/shared/events/index.ts";
import { unary } from "@coursemesh/shared/grpc/client.ts";
import { decodeGrpcError, type DecodedError } from "@coursemesh/shared/grpc/errors.ts";
import {
  createTestDatabase,
  startServiceProcess,
  TEST_NATS_URL,
  testNatsPrefix,
  testToken,
  type ServiceProcess,
  type TestDatabase,
} from "@coursemesh/shared/testing/harness.ts";

export { EnrollmentStatus } from "@coursemesh/proto/coursemesh/allocator/v1/allocator";

/** A test file's own database, NATS prefix and direct SQL access to the allocator's schema. */
export interface TestWorld {
  db: TestDatabase;
  natsPrefix: string;
  sql: Sql;
  processes: ServiceProcess[];
  start(env?: Record<string, string>): Promise<ServiceProcess>;
  /** The ENROLLMENT stream's first `count` messages in order, waiting up to `timeoutMs` for `count` of them. */
  readEvents(count: number, timeoutMs?: number): Promise<JsMsg[]>;
  close(): Promise<void>;
}

/** Creates the file's database and NATS prefix; `start` runs allocator processes on them. */
export async function createWorld(): Promise<TestWorld> {
  const db = await createTestDatabase();
  const natsPrefix = testNatsPrefix();
  const sql = postgres(db.url, { max: 4, onnotice: () => {} }) as unknown as Sql;
  const processes: ServiceProcess[] = [];
  const nats = await connectNats({ servers: TEST_NATS_URL, name: `allocator-test-${natsPrefix}` });
  const jsm = await jetstreamManager(nats);
  return {
    db,
    natsPrefix,
    sql,
    processes,
    async start(env = {}) {
      const process = await startServiceProcess("allocator", {
        env: { DATABASE_URL: db.url, NATS_PREFIX: natsPrefix, ALLOCATOR_SAFETY_POLL_MS: "500", ...env },
      });
      processes.push(process);
      return process;
    },
    async readEvents(count, timeoutMs = 10_000) {
      const consumer = await jetstream(nats).consumers.get(streamName(natsPrefix, "ENROLLMENT"));
      const messages: JsMsg[] = [];
      const deadline = Date.now() + timeoutMs;
      while (messages.length < count && Date.now() < deadline) {
        const batch = await consumer.fetch({ max_messages: count - messages.length, expires: Math.max(500, Math.min(2000, deadline - Date.now())) });
        for await (const message of batch) messages.push(message);
      }
      return messages;
    },
    async close() {
      await Promise.all(processes.filter((p) => p.process.exitCode === null).map((p) => p.kill()));
      // Streams reserve their max_bytes on the server, which other test runs share.
      await deleteStreams(jsm, natsPrefix).catch(() => {});
      await nats.close();
      await sql.end();
      await db.drop();
    },
  };
}

export const tokens = {
  registrar: () => testToken("registrar-1", ["registrar"]),
  service: () => testToken("svc-notifier", ["service"]),
  operator: () => testToken("operator-1", ["operator"]),
  student: (sub: string) => testToken(sub, ["student"]),
};

/** The EnrollmentService as promises, each call with a bearer token. */
export function connect(address: string) {
  const client = new EnrollmentServiceClient(address, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": 16 * 1024 * 1024,
  });
  return {
    client,
    createCourse: (token: string, request: Partial<CreateCourseRequest>) => unary(client.createCourse.bind(client), CreateCourseRequest.fromPartial(request), { token }),
    getCourse: (token: string, id: string) => unary(client.getCourse.bind(client), GetCourseRequest.fromPartial({ id }), { token }),
    listCourses: (token: string, request: Partial<ListCoursesRequest> = {}) => unary(client.listCourses.bind(client), ListCoursesRequest.fromPartial(request), { token }),
    updateCourse: (token: string, request: Partial<UpdateCourseRequest>) => unary(client.updateCourse.bind(client), UpdateCourseRequest.fromPartial(request), { token }),
    enroll: (token: string, request: Partial<EnrollRequest>, deadlineMs?: number) =>
      unary(client.enroll.bind(client), EnrollRequest.fromPartial(request), { token, deadlineMs }),
    getRequest: (token: string, request: Partial<GetRequestRequest>) => unary(client.getRequest.bind(client), GetRequestRequest.fromPartial(request), { token }),
    listRequests: (token: string, request: Partial<ListRequestsRequest> = {}) =>
      unary(client.listRequests.bind(client), ListRequestsRequest.fromPartial(request), { token }),
    drop: (token: string, request: Partial<DropRequest>) => unary(client.drop.bind(client), DropRequest.fromPartial(request), { token }),
    listEnrollments: (token: string, request: Partial<ListEnrollmentsRequest>) =>
      unary(client.listEnrollments.bind(client), ListEnrollmentsRequest.fromPartial(request), { token }),
    listWaitlist: (token: string, request: Partial<ListWaitlistRequest>) => unary(client.listWaitlist.bind(client), ListWaitlistRequest.fromPartial(request), { token }),
    /** Opens a WatchRequest stream; `next()` resolves with each message, `cancel()` ends it. */
    watch(token: string, requestId: string) {
      const metadata = new grpc.Metadata();
      metadata.set("authorization", `Bearer ${token}`);
      const stream = client.watchRequest(WatchRequestRequest.fromPartial({ requestId }), metadata);
      const received: WatchRequestResponse[] = [];
      const waiting: ((value: WatchRequestResponse | null) => void)[] = [];
      let ended = false;
      let failure: unknown;
      stream.on("data", (message: WatchRequestResponse) => {
        const waiter = waiting.shift();
        if (waiter) waiter(message);
        else received.push(message);
      });
      const finish = () => {
        ended = true;
        for (const waiter of waiting.splice(0)) waiter(null);
      };
      stream.on("end", finish);
      stream.on("error", (error) => {
        failure = error;
        finish();
      });
      return {
        /** The next message, or null when the stream ended. */
        next(): Promise<WatchRequestResponse | null> {
          const message = received.shift();
          if (message) return Promise.resolve(message);
          if (ended) return Promise.resolve(null);
          return new Promise((resolve) => waiting.push(resolve));
        },
        get error() {
          return failure;
        },
        cancel: () => stream.cancel(),
      };
    },
    close: () => client.close(),
  };
}

export type Api = ReturnType<typeof connect>;

/** A test file's world with one allocator process, a client of it and a registrar's token. */
export async function startAllocator(): Promise<{ world: TestWorld; api: Api; registrar: string }> {
  const world = await createWorld();
  return { world, api: connect((await world.start()).grpcAddress), registrar: await tokens.registrar() };
}

/** The decoded error of a call that must fail. */
export async function failure(call: Promise<unknown>): Promise<DecodedError> {
  try {
    await call;
  } catch (error) {
    return decodeGrpcError(error);
  }
  throw new Error("the call succeeded; it should have failed");
}

let courseCounter = 0;

/** A fresh course code for a test. */
export function courseCode(prefix = "TEST"): string {
  courseCounter += 1;
  return `${prefix} ${100 + courseCounter} LEC A${courseCounter}`;
}

/** Runs `tasks` with at most `concurrency` of them in flight. */
export async function inParallel<T>(count: number, concurrency: number, task: (index: number) => Promise<T>): Promise<PromiseSettledResult<T>[]> {
  const results: PromiseSettledResult<T>[] = new Array(count);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, count) }, async () => {
      while (next < count) {
        const index = next++;
        try {
          results[index] = { status: "fulfilled", value: await task(index) };
        } catch (reason) {
          results[index] = { status: "rejected", reason };
        }
      }
    }),
  );
  return results;
}
