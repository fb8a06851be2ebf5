/**
 * The shared gRPC server's own cost per call, printing one JSON object: CPU µs per unary call of a
 * server built with the shared startGrpcServer/defineService (auth, span, metrics, error mapping,
 * health, reflection) against a bare grpc-js server with the same options, both answering Enroll
 * with a fixed response from a trivial handler. Each server is a child process whose CPU is read
 * from /proc, so machine load slows the wall clock, not the figures; the two take turns for
 * `ROUNDS` rounds against the same hand-framed HTTP/2 client, and the median of each is reported.
 * Then, in this process, the wrapper alone: the shared server's registered Enroll handler called
 * directly with a stand-in call object (no network, no grpc-js), CPU per call from
 * process.cpuUsage — the figure that shows a change to the wrapper to within a tenth of a µs.
 * Run: bun run bench/grpc-server.ts [--quick]
 */
import { EventEmitter } from "node:events";
import { availableParallelism, loadavg } from "node:os";
import * as grpc from "@grpc/grpc-js";
import { EnrollmentServiceService, EnrollmentStatus, EnrollRequest, EnrollResponse, type EnrollmentServiceServer } from "@coursemesh/proto/coursemesh/allocator/v1/allocator";
import { createAuthenticator } from "@coursemesh/shared/auth.ts";
import { createLogger } from "@coursemesh/shared/logger.ts";
import { failedPrecondition } from "@coursemesh/shared/grpc/errors.ts";
import { defineService, SERVER_OPTIONS, startGrpcServer, type Handlers, type Policy } from "@coursemesh/shared/grpc/server.ts";
import { startTelemetry } from "@coursemesh/shared/telemetry.ts";
import { TEST_JWT_SECRET, testToken } from "@coursemesh/shared/testing/harness.ts";
import { connectH2Unary } from "./h2-unary.ts";
import { processCpuSeconds } from "./proc-cpu.ts";

const quick = process.argv.includes("--quick");
const CALLS_PER_ROUND = quick ? 3_000 : 10_000;
const ROUNDS = quick ? 3 : 5;
const CALLERS = 64;
const ENROLL_PATH = "/coursemesh.allocator.v1.EnrollmentService/Enroll";
type Kind = "shared" | "bare";

const RESPONSE: EnrollResponse = EnrollResponse.fromPartial({
  requestId: "00000000-0000-4000-8000-000000000001",
  status: EnrollmentStatus.ENROLLMENT_STATUS_PENDING,
  courseId: "00000000-0000-4000-8000-000000000002",
  studentId: "s1",
  message: "accepted; 1st in the queue for BENCH 101",
  idempotencyKey: "k",
  courseCode: "BENCH 101",
  queuePosition: 1,
  createdAt: new Date(),
  updatedAt: new Date(),
});

/** The server side, in a child process: prints its port, serves until killed. */
async function serve(kind: Kind): Promise<void> {
  if (kind === "bare") {
    const server = new grpc.Server(SERVER_OPTIONS);
    server.addService(EnrollmentServiceService, {
      enroll: (_call: grpc.ServerUnaryCall<EnrollRequest, EnrollResponse>, callback: grpc.sendUnaryData<EnrollResponse>) => callback(null, RESPONSE),
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
    );
    console.log(`PORT ${port}`);
    return;
  }
  const running = await startSharedServer();
  running.setServing("SERVING");
  console.log(`PORT ${running.port}`);
}

/** The shared server with a trivial Enroll handler (every other RPC refuses), on a free port. */
async function startSharedServer() {
  startTelemetry("grpc-bench");
  const names = Object.keys(EnrollmentServiceService) as (keyof Handlers<EnrollmentServiceServer>)[];
  const handlers: Record<string, () => Promise<unknown>> = Object.fromEntries(
    names.map((name) => [name, async () => { throw failedPrecondition("NOT_IN_BENCH", `${name} is not served here`); }]),
  );
  const policy = Object.fromEntries(names.map((name) => [name, ["student", "registrar", "service"]]));
  handlers.enroll = async () => RESPONSE;
  return startGrpcServer({
    service: "grpc-bench",
    host: "127.0.0.1",
    port: 0,
    services: [defineService<EnrollmentServiceServer>(EnrollmentServiceService, handlers as unknown as Handlers<EnrollmentServiceServer>, policy as unknown as Policy<EnrollmentServiceServer>)],
    authenticator: createAuthenticator({ AUTH_DISABLED: false, AUTH_JWT_SECRET: TEST_JWT_SECRET, AUTH_JWKS_URL: undefined, AUTH_ISSUER: undefined, AUTH_AUDIENCE: undefined } as never),
    logger: createLogger("grpc-bench", "warn"),
  });
}

/**
 * CPU µs per call of the shared wrapper alone: the handler grpc-js would run for Enroll, called with
 * a stand-in unary call (the same metadata a client sends), 100 calls in flight at a time.
 */
async function wrapperCpuUs(token: string): Promise<number[]> {
  const running = await startSharedServer();
  // grpc-js keeps registered handlers in a private map; the bench reads it to call one directly.
  const handlers = (running.server as unknown as { handlers: Map<string, { func: grpc.handleUnaryCall<unknown, unknown> }> }).handlers;
  const func = handlers.get(ENROLL_PATH)!.func;
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  metadata.set("user-agent", "grpc-bench");
  const deadline = new Date(Date.now() + 3_600_000);
  const batch = (n: number) =>
    new Promise<void>((resolve) => {
      let done = 0;
      for (let i = 0; i < n; i++) {
        const call = Object.assign(new EventEmitter(), { metadata, cancelled: false, request: {}, getDeadline: () => deadline });
        func(call as unknown as grpc.ServerUnaryCall<unknown, unknown>, () => ++done === n && resolve());
      }
    });
  const perRound = quick ? 20_000 : 50_000;
  for (let i = 0; i < perRound / 100; i++) await batch(100); // warm-up
  const results: number[] = [];
  for (let r = 0; r < (quick ? 5 : 9); r++) {
    const before = process.cpuUsage();
    for (let i = 0; i < perRound / 100; i++) await batch(100);
    const used = process.cpuUsage(before);
    results.push((used.user + used.system) / perRound);
  }
  await running.shutdown(1000);
  return results;
}

async function startChild(kind: Kind) {
  const child = Bun.spawn(["bun", ...(process.env.BENCH_CPU_PROF ? ["--cpu-prof", "--cpu-prof-interval=250", `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : []), import.meta.path, "--serve", kind], { stdout: "pipe", stderr: "inherit" });
  const reader = child.stdout.getReader();
  let text = "";
  while (!/PORT \d+/.test(text)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${kind} server exited before listening`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return { child, address: `127.0.0.1:${/PORT (\d+)/.exec(text)![1]}` };
}

async function main(): Promise<void> {
  const token = await testToken("bench-registrar", ["registrar"]);
  const body = EnrollRequest.encode(EnrollRequest.fromPartial({ idempotencyKey: "k", studentId: "s1", courseId: "00000000-0000-4000-8000-000000000002" })).finish();
  const kinds: Kind[] = ["shared", "bare"];
  const servers = Object.fromEntries(await Promise.all(kinds.map(async (kind) => [kind, await startChild(kind)] as const))) as Record<Kind, Awaited<ReturnType<typeof startChild>>>;
  const cpuUs: Record<Kind, number[]> = { shared: [], bare: [] };

  async function round(kind: Kind, calls: number): Promise<number> {
    const { child, address } = servers[kind];
    const client = connectH2Unary(address, token);
    let next = 0;
    const before = processCpuSeconds(child.pid);
    await Promise.all(
      Array.from({ length: CALLERS }, async () => {
        while (next < calls) {
          next++;
          await client.call(ENROLL_PATH, body);
        }
      }),
    );
    const used = processCpuSeconds(child.pid) - before;
    client.close();
    return (used * 1e6) / calls;
  }

  try {
    for (let w = 0; w < 2; w++) for (const kind of kinds) await round(kind, CALLS_PER_ROUND); // warm-up: JIT, connections
    for (let r = 0; r < ROUNDS; r++) {
      for (let i = 0; i < kinds.length; i++) {
        const kind = kinds[(i + r) % kinds.length]!;
        cpuUs[kind].push(await round(kind, CALLS_PER_ROUND));
      }
    }
  } finally {
    for (const { child } of Object.values(servers)) {
      child.kill("SIGINT");
      await child.exited;
    }
  }
  const inProcess = await wrapperCpuUs(token);
  const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
  const r1 = (n: number) => Math.round(n * 10) / 10;
  const r2 = (n: number) => Math.round(n * 100) / 100;
  const shared = median(cpuUs.shared);
  const bare = median(cpuUs.bare);
  console.log(
    JSON.stringify({
      benchmark: "grpc-server",
      machine: { cores: availableParallelism(), loadavg1: r1(loadavg()[0]!) },
      workload: { rounds: ROUNDS, callsPerRound: CALLS_PER_ROUND, callers: CALLERS, rpc: "Enroll, trivial handler", tracing: "off" },
      cpu_us_per_call: { shared: cpuUs.shared.map(r1), bare: cpuUs.bare.map(r1) },
      median_cpu_us_per_call: { shared: r1(shared), bare: r1(bare), wrapper_overhead: r1(shared - bare) },
      ratio_shared_vs_bare: r2(shared / bare),
      wrapper_in_process_cpu_us_per_call: { median: r2(median(inProcess)), runs: inProcess.map(r2) },
    }),
  );
}

const serveAt = process.argv.indexOf("--serve");
if (serveAt >= 0) {
  process.on("SIGINT", () => process.exit(0));
  await serve(process.argv[serveAt + 1] as Kind);
} else {
  await main();
  process.exit(0);
}
