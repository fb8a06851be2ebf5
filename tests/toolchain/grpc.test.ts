// Toolchain go/no-go: @grpc/grpc-js + @grpc/proto-loader on the pinned Bun,
// and interop with Node 20 in both directions.
//
// The server implementation and the client checks live in fixtures/echo-checks.mjs
// (plain JS), shared by this file and by the Node programs node-server.mjs and
// node-client.mjs, so every direction runs exactly the same checks:
//   Bun client  -> Bun server
//   Node client -> Bun server    (spawns `node fixtures/node-client.mjs ADDR`)
//   Bun client  -> Node server   (spawns `node fixtures/node-server.mjs`)
// All traffic is on 127.0.0.1; every call has a deadline.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import {
  type CheckResult,
  LARGE_PAYLOAD_BYTES,
  clientChecks,
  createEchoClient,
  runtime,
  startEchoServer,
  unaryCall,
} from "./fixtures/echo-checks.mjs";

const FIXTURES = join(import.meta.dir, "fixtures");
const NODE = process.env.TOOLCHAIN_NODE_BIN ?? "node";

/** Read stdout of a child until the first complete line, bounded in time. */
async function readFirstLine(stream: ReadableStream<Uint8Array>, timeoutMs: number): Promise<string> {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  const timeout = new Promise<never>((_, reject) =>
    setTimeout(() => reject(new Error(`no line on stdout within ${timeoutMs} ms`)), timeoutMs),
  );
  try {
    for (;;) {
      const { value, done } = await Promise.race([reader.read(), timeout]);
      if (value) buffered += decoder.decode(value, { stream: true });
      const nl = buffered.indexOf("\n");
      if (nl >= 0) return buffered.slice(0, nl);
      if (done) throw new Error(`stdout closed before a full line; got: ${JSON.stringify(buffered)}`);
    }
  } finally {
    reader.releaseLock();
  }
}

test("runs under the pinned Bun and finds Node 20", async () => {
  expect(runtime).toBe(`bun/${Bun.version}`);
  expect(Bun.version).toBe("1.4.5");
  const proc = Bun.spawn([NODE, "--version"], { stdout: "pipe", stderr: "inherit" });
  const version = (await new Response(proc.stdout).text()).trim();
  expect(await proc.exited).toBe(0);
  expect(version).toMatch(/^v20\./);
});

describe("Bun server", () => {
  let server: Awaited<ReturnType<typeof startEchoServer>>;
  let client: grpc.Client;

  beforeAll(async () => {
    server = await startEchoServer("127.0.0.1:0");
    client = createEchoClient(server.address);
  });

  afterAll(async () => {
    client?.close();
    await server?.close();
  });

  describe("<- Bun client", () => {
    for (const check of clientChecks) {
      test(check.name, async () => {
        const details = await check.run(client);
        if (check.name === "unary") expect(details.serverRuntime).toBe(`bun/${Bun.version}`);
      });
    }

    test("the raised message limit is what makes 4 MiB pass (default client gets RESOURCE_EXHAUSTED)", async () => {
      // A client with grpc-js defaults (4 MiB receive limit) must reject the 4 MiB echo.
      const defaults = createEchoClient(server.address, { "grpc.enable_http_proxy": 0 });
      try {
        const err = await unaryCall(defaults, { text: "big", payload: randomBytes(LARGE_PAYLOAD_BYTES) }).then(
          () => null,
          (e: grpc.ServiceError) => e,
        );
        expect(err?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      } finally {
        defaults.close();
      }
    });
  });

  test("<- Node 20 client (node-client.mjs runs the shared checks)", async () => {
    const proc = Bun.spawn([NODE, join(FIXTURES, "node-client.mjs"), server.address], {
      stdout: "pipe",
      stderr: "pipe",
    });
    const killer = setTimeout(() => proc.kill("SIGKILL"), 25_000);
    const [stdout, stderr, exitCode] = await Promise.all([
      new Response(proc.stdout).text(),
      new Response(proc.stderr).text(),
      proc.exited,
    ]);
    clearTimeout(killer);
    const line = stdout.trim().split("\n").at(-1) ?? "";
    let parsed: { clientRuntime: string; results?: CheckResult[]; error?: string };
    try {
      parsed = JSON.parse(line);
    } catch {
      throw new Error(`node-client printed no JSON result (exit ${exitCode}).\nstdout: ${stdout}\nstderr: ${stderr}`);
    }
    expect(parsed.error).toBeUndefined();
    expect(parsed.clientRuntime).toMatch(/^node\/v20\./);
    const results = parsed.results ?? [];
    expect(results.map((r) => r.name)).toEqual(clientChecks.map((c) => c.name));
    const failed = results.filter((r) => !r.ok).map((r) => `${r.name}: ${r.error}`);
    expect(failed).toEqual([]);
    expect(results.find((r) => r.name === "unary")?.details?.serverRuntime).toBe(`bun/${Bun.version}`);
    expect(exitCode).toBe(0);
  });
});

describe("Node 20 server <- Bun client", () => {
  let proc: ReturnType<typeof Bun.spawn> | undefined;
  let client: grpc.Client;
  let stderr = "";

  beforeAll(async () => {
    // stdin is a pipe the server watches: if this test process dies, the server exits too.
    proc = Bun.spawn([NODE, join(FIXTURES, "node-server.mjs"), "127.0.0.1:0"], {
      stdin: "pipe",
      stdout: "pipe",
      stderr: "pipe",
    });
    void new Response(proc.stderr as ReadableStream).text().then((t) => (stderr = t));
    let ready: { port: number; serverRuntime: string };
    try {
      ready = JSON.parse(await readFirstLine(proc.stdout as ReadableStream<Uint8Array>, 10_000));
    } catch (err) {
      proc.kill("SIGKILL");
      throw new Error(`node-server did not start: ${err}\nstderr: ${stderr}`);
    }
    expect(ready.serverRuntime).toMatch(/^node\/v20\./);
    client = createEchoClient(`127.0.0.1:${ready.port}`);
  });

  afterAll(async () => {
    client?.close();
    if (proc) {
      proc.kill("SIGTERM");
      const killer = setTimeout(() => proc?.kill("SIGKILL"), 3000);
      await proc.exited;
      clearTimeout(killer);
    }
  });

  for (const check of clientChecks) {
    test(check.name, async () => {
      const details = await check.run(client);
      if (check.name === "unary") expect(details.serverRuntime).toMatch(/^node\/v20\./);
    });
  }
});
