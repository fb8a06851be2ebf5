import { afterAll, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import type { Subprocess } from "bun";
import { unary } from "../src/grpc/client.ts";
import { startOtlpReceiver } from "../src/testing/otlp.ts";
import { PlatformTestClient } from "./fixtures/platform-service.ts";

const receiver = startOtlpReceiver();
const children: Subprocess[] = [];

async function startTracedServer(service: string, protocol = "http/json"): Promise<{ address: string; child: Subprocess<"ignore", "pipe", "inherit"> }> {
  const child = Bun.spawn(["bun", "run", new URL("./fixtures/platform-service.ts", import.meta.url).pathname, service], {
    env: {
      PATH: process.env.PATH!,
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
      OTEL_BSP_SCHEDULE_DELAY: "100",
    },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "inherit",
  });
  children.push(child);
  const reader = child.stdout.getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${service} exited before printing its port`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return { address: `127.0.0.1:${JSON.parse(text.split("\n")[0]!).port}`, child };
}

afterAll(async () => {
  for (const child of children) child.kill("SIGKILL");
  await receiver.stop();
});

test("one trace follows a call from one process through a second to a third", async () => {
  const a = await startTracedServer("service-a");
  const b = await startTracedServer("service-b");
  const traceId = randomBytes(16).toString("hex");
  const callerSpanId = randomBytes(8).toString("hex");
  const metadata = new grpc.Metadata();
  metadata.set("traceparent", `00-${traceId}-${callerSpanId}-01`);

  const client = new PlatformTestClient(b.address, grpc.credentials.createInsecure()) as any;
  const reply = await unary<object, any>(client.Relay.bind(client), { message: a.address }, { metadata, deadlineMs: 10_000 });
  client.close();
  expect(reply.message).toBe("pong relayed");
  expect(reply.traceId).toBe(traceId);

  // SIGTERM makes each server flush its spans before exiting.
  for (const child of [a.child, b.child]) child.kill("SIGTERM");
  await Promise.all([a.child.exited, b.child.exited]);

  const spans = await receiver.waitFor((all) => all.filter((s) => s.traceId === traceId).length >= 3);
  const inTrace = spans.filter((s) => s.traceId === traceId);
  const relayServer = inTrace.find((s) => s.service === "service-b" && s.name === "service-b.Relay");
  const relayClient = inTrace.find((s) => s.service === "service-b" && s.name === "service-b.Ping");
  const pingServer = inTrace.find((s) => s.service === "service-a" && s.name === "service-a.Ping");
  expect(relayServer?.parentSpanId).toBe(callerSpanId);
  expect(relayServer?.kind).toBe(2); // SERVER
  expect(relayClient?.parentSpanId).toBe(relayServer!.spanId);
  expect(relayClient?.kind).toBe(3); // CLIENT
  expect(pingServer?.parentSpanId).toBe(relayClient!.spanId);
  expect(pingServer?.attributes["rpc.system"]).toBe("grpc");
  expect(pingServer?.attributes["rpc.method"]).toBe("Ping");
  expect(pingServer?.attributes["rpc.grpc.status_code"]).toBe(0);
});

test("spans also leave over OTLP http/protobuf, the default protocol", async () => {
  const server = await startTracedServer("service-proto", "http/protobuf");
  const traceId = randomBytes(16).toString("hex");
  const metadata = new grpc.Metadata();
  metadata.set("traceparent", `00-${traceId}-${randomBytes(8).toString("hex")}-01`);
  const client = new PlatformTestClient(server.address, grpc.credentials.createInsecure()) as any;
  await unary<object, any>(client.Ping.bind(client), { message: "x" }, { metadata, deadlineMs: 5000 });
  client.close();
  server.child.kill("SIGTERM");
  await server.child.exited;
  const deadline = Date.now() + 10_000;
  const contains = () => receiver.protobufBodies().some((body) => Buffer.from(body).includes(Buffer.from(traceId, "hex")));
  while (!contains() && Date.now() < deadline) await Bun.sleep(50);
  // The protobuf body carries the trace id as its 16 raw bytes.
  expect(contains()).toBe(true);
});
