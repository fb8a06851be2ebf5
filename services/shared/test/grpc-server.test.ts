import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as grpc from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { protoPath as healthProtoPath } from "grpc-health-check";
import { ROLES, type Role } from "../src/auth.ts";
import { createClient, unary } from "../src/grpc/client.ts";
import { decodeGrpcError } from "../src/grpc/errors.ts";
import type { RunningGrpcServer } from "../src/grpc/server.ts";
import { registry } from "../src/metrics.ts";
import { mintToken } from "../src/auth.ts";
import { PLATFORM_POLICY, PlatformTestClient, startPlatformServer } from "./fixtures/platform-service.ts";

const SECRET = "platform-test-secret-0123456789abcdef";
let server: RunningGrpcServer;
let client: any;
const address = () => `127.0.0.1:${server.port}`;
const token = (roles: Role[], subject = "alice", secret = SECRET, expiresIn = "5m") => mintToken({ subject, roles, secret, expiresIn });

async function call(method: string, request: object, bearer?: string) {
  const metadata = new grpc.Metadata();
  if (bearer) metadata.set("authorization", `Bearer ${bearer}`);
  return unary<object, any>((client as any)[method].bind(client), request, { metadata, deadlineMs: 5000 });
}

async function failure(promise: Promise<unknown>) {
  try {
    await promise;
  } catch (error) {
    return decodeGrpcError(error);
  }
  throw new Error("expected the call to fail");
}

beforeAll(async () => {
  server = await startPlatformServer({ secret: SECRET });
  server.setServing("SERVING");
  client = createClient(PlatformTestClient as any, address(), { caller: "test", defaultDeadlineMs: 5000 });
});

afterAll(async () => {
  client.close();
  await server.shutdown(1000);
});

describe("auth: every role allowed and refused per the policy table", () => {
  const unaryMethods = ["Ping", "Whoami", "Fail"] as const;
  for (const method of unaryMethods) {
    const rule = PLATFORM_POLICY[method];
    for (const role of ROLES) {
      const allowed = rule === "public" || (rule as readonly string[]).includes(role);
      test(`${method} as ${role} is ${allowed ? "allowed" : "PERMISSION_DENIED"}`, async () => {
        const bearer = await token([role]);
        const request = { message: method === "Fail" ? "precondition" : "hi" };
        if (!allowed) {
          const error = await failure(call(method, request, bearer));
          expect(error.code).toBe(grpc.status.PERMISSION_DENIED);
          expect(error.reason).toBe("ROLE_REQUIRED");
          expect(error.message).toContain("needs one of the roles registrar, operator");
          return;
        }
        if (method === "Fail") {
          // Passing auth reaches the handler, which fails on purpose with its own code.
          expect((await failure(call(method, request, bearer))).code).toBe(grpc.status.FAILED_PRECONDITION);
          return;
        }
        const reply = await call(method, request, bearer);
        expect(reply.subject).toBe("alice");
        expect(reply.roles).toEqual([role]);
      });
    }
  }

  test("a student may call Join (client streaming); a registrar may not", async () => {
    const joinWith = (bearer: string) =>
      new Promise<any>((resolve, reject) => {
        const metadata = new grpc.Metadata();
        metadata.set("authorization", `Bearer ${bearer}`);
        const stream = client.Join(metadata, (error: unknown, reply: unknown) => (error ? reject(error) : resolve(reply)));
        for (const word of ["one", "two", "three"]) stream.write({ message: word });
        stream.end();
      });
    expect((await joinWith(await token(["student"]))).message).toBe("one two three");
    expect((await failure(joinWith(await token(["registrar"])))).code).toBe(grpc.status.PERMISSION_DENIED);
  });

  test("no token on a protected RPC is UNAUTHENTICATED with a clear message", async () => {
    const error = await failure(call("Whoami", {}));
    expect(error.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(error.reason).toBe("TOKEN_MISSING");
    expect(error.message).toContain("needs a bearer token");
  });

  test("a forged, expired or malformed token is UNAUTHENTICATED", async () => {
    const forged = await failure(call("Whoami", {}, await token(["operator"], "mallory", "another-secret-0123456789abcdefghij")));
    expect(forged.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(forged.reason).toBe("TOKEN_INVALID");
    const expired = await failure(call("Whoami", {}, await token(["operator"], "alice", SECRET, "-1m")));
    expect(expired.reason).toBe("TOKEN_EXPIRED");
    const malformed = await failure(call("Whoami", {}, "not-a-jwt"));
    expect(malformed.code).toBe(grpc.status.UNAUTHENTICATED);
    // Even a public RPC refuses a bad token rather than silently ignoring it.
    expect((await failure(call("Ping", { message: "x" }, "not-a-jwt"))).code).toBe(grpc.status.UNAUTHENTICATED);
  });

  test("a verified token is remembered, but never past its expiry", async () => {
    const shortLived = await token(["registrar"], "alice", SECRET, "2s");
    expect((await call("Whoami", {}, shortLived)).subject).toBe("alice");
    expect((await call("Whoami", {}, shortLived)).subject).toBe("alice");
    await Bun.sleep(2100);
    const error = await failure(call("Whoami", {}, shortLived));
    expect(error.reason).toBe("TOKEN_EXPIRED");
  });

  test("a token with no roles is refused by role rules but accepted where any token will do", async () => {
    const bearer = await token([]);
    expect((await failure(call("Whoami", {}, bearer))).code).toBe(grpc.status.PERMISSION_DENIED);
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${bearer}`);
    const replies: string[] = [];
    await new Promise<void>((resolve, reject) => {
      const stream = client.Count({ count: 3 }, metadata);
      stream.on("data", (reply: { message: string }) => replies.push(reply.message));
      stream.on("end", resolve);
      stream.on("error", reject);
    });
    expect(replies).toEqual(["1", "2", "3"]);
  });
});

describe("errors carry the right status and a google.rpc.ErrorInfo reason", () => {
  test("RESOURCE_EXHAUSTED with reason, metadata and a retry delay", async () => {
    const error = await failure(call("Fail", { message: "full" }));
    expect(error.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(error.reason).toBe("QUEUE_FULL");
    expect(error.domain).toBe("coursemesh.dev");
    expect(error.metadata).toEqual({ course_id: "c1" });
    expect(error.retryDelayMs).toBe(1500);
    expect(error.message).toBe("too many pending requests; retry later");
  });

  test("an unexpected error is INTERNAL and does not leak its message", async () => {
    const error = await failure(call("Fail", { message: "boom" }));
    expect(error.code).toBe(grpc.status.INTERNAL);
    expect(error.message).toBe("internal error");
    expect(error.message).not.toContain("secret");
  });
});

describe("client helper", () => {
  test("idempotent calls are retried on UNAVAILABLE; others are not", async () => {
    const retrying = createClient(PlatformTestClient as any, address(), { caller: "test", idempotentMethods: ["Fail"], defaultDeadlineMs: 5000 });
    const reply = await unary<object, any>((retrying as any).Fail.bind(retrying), { message: "flaky-a" });
    expect(reply.message).toBe("ok after 3");
    retrying.close();
    const error = await failure(call("Fail", { message: "flaky-b" }));
    expect(error.code).toBe(grpc.status.UNAVAILABLE);
  });
});

describe("health, reflection and metrics", () => {
  test("grpc.health.v1.Health reports SERVING, then NOT_SERVING", async () => {
    const health = grpc.loadPackageDefinition(loadSync(healthProtoPath, { enums: String })) as any;
    const healthClient = new health.grpc.health.v1.Health(address(), grpc.credentials.createInsecure());
    const check = (service: string) =>
      new Promise<string>((resolve, reject) => healthClient.Check({ service }, (e: unknown, r: { status: string }) => (e ? reject(e) : resolve(r.status))));
    expect(await check("")).toBe("SERVING");
    expect(await check("coursemesh.platformtest.v1.PlatformTestService")).toBe("SERVING");
    server.setServing("NOT_SERVING");
    expect(await check("")).toBe("NOT_SERVING");
    server.setServing("SERVING");
    healthClient.close();
  });

  test("server reflection (v1 and v1alpha) lists the served services and describes them", async () => {
    for (const version of ["v1", "v1alpha"]) {
      const path = require.resolve(`@grpc/reflection/build/proto/grpc/reflection/${version}/reflection.proto`);
      const reflection = grpc.loadPackageDefinition(loadSync(path)) as any;
      const reflectionClient = new reflection.grpc.reflection[version].ServerReflection(address(), grpc.credentials.createInsecure());
      const ask = (request: object) =>
        new Promise<any>((resolve, reject) => {
          const stream = reflectionClient.ServerReflectionInfo();
          stream.on("data", (reply: unknown) => {
            resolve(reply);
            stream.end();
          });
          stream.on("error", reject);
          stream.write(request);
        });
      const listed = await ask({ listServices: "" });
      const names = listed.listServicesResponse.service.map((s: { name: string }) => s.name);
      expect(names).toContain("coursemesh.platformtest.v1.PlatformTestService");
      expect(names).toContain("grpc.health.v1.Health");
      expect(names).not.toContain("coursemesh.allocator.v1.EnrollmentService");
      const described = await ask({ fileContainingSymbol: "coursemesh.platformtest.v1.PlatformTestService" });
      expect(described.fileDescriptorResponse.fileDescriptorProto.length).toBeGreaterThan(0);
      reflectionClient.close();
    }
  });

  test("/metrics counts calls by method and code", async () => {
    await call("Ping", { message: "metrics" });
    const text = await registry.metrics();
    expect(text).toMatch(/grpc_server_handled_total\{[^}]*grpc_method="Ping"[^}]*grpc_code="OK"[^}]*\} \d+/);
    expect(text).toMatch(/grpc_server_handled_total\{[^}]*grpc_method="Whoami"[^}]*grpc_code="PERMISSION_DENIED"[^}]*\} \d+/);
    expect(text).toContain("grpc_server_handling_seconds_bucket");
  });
});

describe("streams, deadlines and cancellation", () => {
  test("a client cancelling a server stream stops the handler", async () => {
    const bearer = await token(["student"]);
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${bearer}`);
    const received: string[] = [];
    await new Promise<void>((resolve) => {
      const stream = client.Count({ count: 10_000 }, metadata);
      stream.on("data", (reply: { message: string }) => {
        received.push(reply.message);
        if (received.length === 3) stream.cancel();
      });
      stream.on("error", (error: grpc.ServiceError) => {
        expect(error.code).toBe(grpc.status.CANCELLED);
        resolve();
      });
    });
    expect(received.length).toBeLessThan(50);
  });

  test("the default deadline applies to unary calls", async () => {
    const impatient = createClient(PlatformTestClient as any, address(), { caller: "test", defaultDeadlineMs: 200 });
    const started = Date.now();
    const error = await failure(unary<object, unknown>((impatient as any).Ping.bind(impatient), { message: "x", count: 3000 }));
    expect(error.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(Date.now() - started).toBeLessThan(2000);
    // Within the deadline the same call succeeds.
    expect(await unary<object, any>((impatient as any).Ping.bind(impatient), { message: "y", count: 10 })).toMatchObject({ message: "pong y" });
    impatient.close();
  });
});
