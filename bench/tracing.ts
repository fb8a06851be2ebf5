/**
 * Tracing overhead (issue 8), printing one JSON object: accepted Enroll RPC/s of an allocator
 * exporting every trace (the code's default sampler: parentbased_traceidratio at 1.0, as in dev)
 * and one exporting a tenth (parentbased_traceidratio 0.1, as in prod) over OTLP/HTTP protobuf to
 * a receiver in this process, each against an allocator with tracing off, in the same run on the
 * same database. The three processes run side by side and take turns (off, on, ratio, off, …) so
 * drifting machine load hits all of them alike; each round waits for its decisions before the next
 * starts; the ratio is the median over rounds of each round's traced/untraced.
 * Target: traced/untraced ≥ 0.85.
 * Run: bun run bench/tracing.ts [--quick]
 */
import { availableParallelism, loadavg } from "node:os";
import * as grpc from "@grpc/grpc-js";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect as connectNats } from "@nats-io/transport-node";
import { CreateCourseRequest, EnrollmentServiceClient, EnrollRequest, GetCourseRequest } from "@coursemesh/proto/coursemesh/allocator/v1/allocator";
import { deleteStreams } from "@coursemesh/shared/events/index.ts";
import { unary } from "@coursemesh/shared/grpc/client.ts";
import { createTestDatabase, startServiceProcess, TEST_NATS_URL, testNatsPrefix, testToken, type ServiceProcess } from "@coursemesh/shared/testing/harness.ts";
import { startOtlpReceiver } from "@coursemesh/shared/testing/otlp.ts";
import { connectH2Unary } from "./h2-unary.ts";

const quick = process.argv.includes("--quick");
const CALLS_PER_ROUND = quick ? 1_000 : 4_000;
const ROUNDS = quick ? 3 : 5;
const CALLERS = 64;
const TARGET = 0.85;
const ENROLL_PATH = "/coursemesh.allocator.v1.EnrollmentService/Enroll";

type Mode = "off" | "always_on" | "ratio_0.1";

/** Unary Enroll over the hand-framed HTTP/2 client, so the load generator's CPU stays small next to the service's. */
function enrollClient(address: string, token: string) {
  const h2 = connectH2Unary(address, token);
  return {
    async enroll(request: Partial<EnrollRequest>): Promise<void> {
      await h2.call(ENROLL_PATH, EnrollRequest.encode(EnrollRequest.fromPartial(request)).finish());
    },
    close: h2.close,
  };
}

async function main(): Promise<void> {
  const database = await createTestDatabase();
  const prefix = testNatsPrefix();
  const otlp = startOtlpReceiver();
  const token = await testToken("registrar-bench", ["registrar"]);
  const base = { DATABASE_URL: database.url, NATS_PREFIX: prefix, LOG_LEVEL: "warn" };
  const traced = { OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url, OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf" };
  const envs: Record<Mode, Record<string, string>> = {
    off: base,
    // No OTEL_TRACES_SAMPLER: the code's default (every trace).
    always_on: { ...base, ...traced },
    "ratio_0.1": { ...base, ...traced, OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.1" },
  };
  const modes = Object.keys(envs) as Mode[];
  const processes = {} as Record<Mode, ServiceProcess>;
  // One at a time: the first runs the migrations.
  for (const mode of modes) processes[mode] = await startServiceProcess("allocator", { env: { ...envs[mode], LOG_LEVEL: "info" }, timeoutMs: 60_000 });
  const control = new EnrollmentServiceClient(processes.off.grpcAddress, grpc.credentials.createInsecure());
  const rates: Record<Mode, number[]> = { off: [], always_on: [], "ratio_0.1": [] };
  let student = 0;

  async function round(mode: Mode, calls: number): Promise<number> {
    const { course } = await unary(control.createCourse.bind(control), CreateCourseRequest.fromPartial({ code: `BENCH ${mode} ${student}`, title: "Tracing benchmark", capacity: calls }), { token });
    const client = enrollClient(processes[mode].grpcAddress, token);
    let next = 0;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: CALLERS }, async () => {
        while (next < calls) {
          next++;
          const id = `s${student++}`;
          await client.enroll({ idempotencyKey: crypto.randomUUID(), studentId: id, courseId: course!.id, wait: false });
        }
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    client.close();
    // The decisions run after the answers; wait for them so they do not land in the next mode's round.
    for (;;) {
      const { course: now } = await unary(control.getCourse.bind(control), GetCourseRequest.fromPartial({ id: course!.id }), { token });
      if (now!.pending === 0) break;
      await Bun.sleep(100);
    }
    return calls / seconds;
  }

  try {
    for (const mode of modes) await round(mode, Math.round(CALLS_PER_ROUND / 4)); // warm-up: JIT, pools, connections
    for (let r = 0; r < ROUNDS; r++) {
      // Rotate the order so no mode always runs first (after the idle gap) or last.
      for (let i = 0; i < modes.length; i++) {
        const mode = modes[(i + r) % modes.length]!;
        rates[mode].push(await round(mode, CALLS_PER_ROUND));
        await Bun.sleep(500);
      }
    }
    // Let the batch processors flush, so the exported volume is counted whole.
    await Bun.sleep(2_000);
  } finally {
    control.close();
    await Promise.all(modes.map((mode) => processes[mode].stop()));
  }
  const exportedBytes = otlp.protobufBodies().reduce((sum, body) => sum + body.length, 0);
  await otlp.stop();
  const nats = await connectNats({ servers: TEST_NATS_URL });
  await deleteStreams(await jetstreamManager(nats), prefix).catch(() => {});
  await nats.close();
  await database.drop();

  const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
  const ratioPerRound = (mode: Mode) => rates[mode].map((rate, i) => rate / rates.off[i]!);
  const r1 = (n: number) => Math.round(n * 10) / 10;
  const r3 = (n: number) => Math.round(n * 1000) / 1000;
  const alwaysOn = median(ratioPerRound("always_on"));
  const tenth = median(ratioPerRound("ratio_0.1"));
  console.log(
    JSON.stringify({
      benchmark: "tracing",
      machine: { cores: availableParallelism(), loadavg1: r1(loadavg()[0]!) },
      workload: { rounds: ROUNDS, callsPerRound: CALLS_PER_ROUND, callers: CALLERS, wait: false, exporter: "otlp http/protobuf to an in-process receiver" },
      enrollPerSecond: {
        off: rates.off.map(r1),
        always_on: rates.always_on.map(r1),
        "ratio_0.1": rates["ratio_0.1"].map(r1),
      },
      ratios: { always_on_vs_off: r3(alwaysOn), ratio_0_1_vs_off: r3(tenth) },
      exportedMiB: r1(exportedBytes / 1024 / 1024),
      target: { min: TARGET, defaultSamplerPass: alwaysOn >= TARGET, prodSamplerPass: tenth >= TARGET },
    }),
  );
}

await main();
process.exit(0);
