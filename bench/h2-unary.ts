/**
 * The load generators' gRPC client: unary calls framed by hand over node:http2 (length-prefixed
 * protobuf, `grpc-status` from the trailers), spread over a few connections. On this two-core machine
 * the load generator shares the CPU with the service, Postgres and NATS; grpc-js spends about three
 * times the CPU per call of this client (measured: 184 µs against 66 µs), which would be measuring
 * the load generator. ghz or h2load play this part elsewhere.
 */
import http2 from "node:http2";

/** Opens `channels` HTTP/2 connections to `address`; `call` sends one unary request and resolves with the response message. */
export function connectH2Unary(address: string, token: string, channels = 1) {
  const sessions = Array.from({ length: channels }, () => http2.connect(`http://${address}`));
  let next = 0;
  const call = (path: string, body: Uint8Array): Promise<Buffer> =>
    new Promise((resolve, reject) => {
      const stream = sessions[next++ % sessions.length]!.request({
        ":method": "POST",
        ":path": path,
        "content-type": "application/grpc",
        te: "trailers",
        authorization: `Bearer ${token}`,
        "grpc-timeout": "30S",
      });
      const chunks: Buffer[] = [];
      let status: string | undefined;
      let message = "";
      const readStatus = (headers: http2.IncomingHttpHeaders) => {
        if (headers["grpc-status"] !== undefined) {
          status = String(headers["grpc-status"]);
          message = decodeURIComponent(String(headers["grpc-message"] ?? ""));
        }
      };
      stream.on("response", readStatus);
      stream.on("trailers", readStatus);
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("error", reject);
      stream.on("end", () => (status === "0" ? resolve(Buffer.concat(chunks).subarray(5)) : reject(new Error(`${path}: gRPC status ${status}: ${message}`))));
      const frame = Buffer.alloc(5 + body.length);
      frame.writeUInt32BE(body.length, 1);
      frame.set(body, 5);
      stream.end(frame);
    });
  return {
    call,
    close: () => {
      for (const session of sessions) session.close();
    },
  };
}
