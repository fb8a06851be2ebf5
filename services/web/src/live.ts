/**
 * Server-sent event streams to browsers. Each stream is bounded per user, sends a heartbeat comment
 * so proxies and the server's idle timeout keep it open, and ends its source (a gRPC stream or a
 * poll) when the browser goes away or the process shuts down.
 */
import type * as grpc from "@grpc/grpc-js";
import type { Logger } from "@coursemesh/shared/logger.ts";
import { toWebError } from "./errors.ts";

/** Streams one user may hold open at once (tabs × pages); more get 429. */
export const MAX_STREAMS_PER_USER = 16;
const HEARTBEAT_MS = 15_000;

export interface LiveSink {
  /** Sends one event; `data` is JSON-encoded. */
  send(event: string, data: unknown): void;
  /** Ends the stream (the browser reconnects by itself unless told the stream is over). */
  close(): void;
  /** Aborted when the browser disconnects or the stream is closed. */
  signal: AbortSignal;
}

export interface LiveStreams {
  /**
   * Opens an SSE response for `user`; `start` wires the source to the sink and returns a cleanup.
   * Returns 429 when the user has too many streams open.
   */
  open(user: string, start: (sink: LiveSink) => (() => void) | void | Promise<(() => void) | void>): Response;
  /** Streams open now. */
  count(): number;
  /** Ends every stream (shutdown). */
  closeAll(): void;
}

const encoder = new TextEncoder();

/** The SSE registry of one process. */
export function createLiveStreams(logger: Logger): LiveStreams {
  const perUser = new Map<string, number>();
  const open = new Set<() => void>();
  let shuttingDown = false;

  return {
    open(user, start) {
      // Once shutdown has ended the streams, a new one would only hold the exit up: an empty stream
      // that ends at once makes the browser reconnect (to another replica) a second later.
      if (shuttingDown) return new Response("retry: 1000\n\n", { headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-store" } });
      if ((perUser.get(user) ?? 0) >= MAX_STREAMS_PER_USER) {
        return Response.json({ error: `at most ${MAX_STREAMS_PER_USER} live views at once; close another tab` }, { status: 429, headers: { "retry-after": "10" } });
      }
      perUser.set(user, (perUser.get(user) ?? 0) + 1);
      const aborter = new AbortController();
      let cleanup: (() => void) | void = undefined;
      let heartbeat: ReturnType<typeof setInterval> | undefined;
      let controllerRef: ReadableStreamDefaultController<Uint8Array> | undefined;
      let closed = false;

      const finish = () => {
        if (closed) return;
        closed = true;
        open.delete(finish);
        clearInterval(heartbeat);
        aborter.abort();
        const left = (perUser.get(user) ?? 1) - 1;
        if (left <= 0) perUser.delete(user);
        else perUser.set(user, left);
        try {
          cleanup?.();
        } catch (error) {
          logger.warn({ err: error }, "live stream cleanup failed");
        }
        try {
          controllerRef?.close();
        } catch {
          // already closed by the client
        }
      };
      open.add(finish);

      const write = (text: string) => {
        if (closed) return;
        try {
          controllerRef?.enqueue(encoder.encode(text));
        } catch {
          finish();
        }
      };
      const sink: LiveSink = {
        send(event, data) {
          write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
        },
        close: finish,
        signal: aborter.signal,
      };

      const body = new ReadableStream<Uint8Array>({
        async start(controller) {
          controllerRef = controller;
          // Reconnect after 3 s when the stream drops (e.g. a replica shut down).
          write(`retry: 3000\n: connected\n\n`);
          heartbeat = setInterval(() => write(`: heartbeat\n\n`), HEARTBEAT_MS);
          try {
            const done = await start(sink);
            if (closed) done?.();
            else cleanup = done;
          } catch (error) {
            logger.warn({ err: error }, "live stream failed to start");
            sink.send("failure", { message: "live updates are unavailable; retrying" });
            finish();
          }
        },
        cancel() {
          finish();
        },
      });
      return new Response(body, {
        headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-store", "x-accel-buffering": "no" },
      });
    },
    count() {
      return open.size;
    },
    closeAll() {
      shuttingDown = true;
      for (const finish of [...open]) finish();
    },
  };
}

/** Most items (jobs, requests) one live stream follows; browsers hold few connections per site. */
export const MAX_ITEMS_PER_STREAM = 20;

/**
 * Relays gRPC server streams to one browser stream: `onMessage` sends what each message means. A
 * call that fails because its item is gone or not the user's is dropped; any other failure (a
 * replica stopping) is sent as "failure" and ends the browser stream, which reconnects. When every
 * call has ended, "end" is sent if `endIsFinal` (finished jobs, decided requests: the browser stops
 * listening) and the stream closes. Returns the cleanup that cancels the calls.
 */
export function relayStreams<T>(sink: LiveSink, calls: grpc.ClientReadableStream<T>[], onMessage: (message: T) => void, options: { endIsFinal: boolean }): () => void {
  let open = calls.length;
  const ended = () => {
    open -= 1;
    if (open > 0) return;
    if (options.endIsFinal) sink.send("end", {});
    sink.close();
  };
  for (const call of calls) {
    call.on("data", onMessage);
    call.on("error", (error: grpc.ServiceError) => {
      if (sink.signal.aborted) return;
      const failure = toWebError(error);
      if (failure.status === 404 || failure.status === 403 || failure.status === 400) return ended();
      sink.send("failure", { message: failure.message });
      sink.close();
    });
    call.on("end", ended);
  }
  if (calls.length === 0) ended();
  return () => calls.forEach((call) => call.cancel());
}

/** The item ids a stream URL asks for (`?id=a&id=b`), deduplicated and bounded. */
export function watchedIds(url: URL): string[] {
  return [...new Set(url.searchParams.getAll("id").filter((id) => /^[0-9a-f-]{1,64}$/i.test(id)))].slice(0, MAX_ITEMS_PER_STREAM);
}

/** One item a poll found: `key` says whether it changed since it was last sent. */
export interface PolledItem {
  id: string;
  key: string;
  html: string;
}

/**
 * Follows a source that has no watch by polling it with the stream's own user's token: every
 * `intervalMs` it loads the items and sends `event` for those whose key changed since they were last
 * sent (the first poll only fills in what changed since the page was rendered). A failed poll is
 * sent as "failure" and the next one tries again. Returns the cleanup that stops polling.
 */
export function pollStream(sink: LiveSink, event: string, load: () => Promise<PolledItem[]>, intervalMs: number): () => void {
  const sent = new Map<string, string>();
  let polling = false;
  const poll = async () => {
    if (polling || sink.signal.aborted) return;
    polling = true;
    try {
      for (const item of await load()) {
        if (sent.get(item.id) === item.key) continue;
        const first = !sent.has(item.id);
        sent.set(item.id, item.key);
        sink.send(event, { id: item.id, html: item.html, initial: first });
      }
    } catch (error) {
      sink.send("failure", { message: toWebError(error).message });
    } finally {
      polling = false;
    }
  };
  void poll();
  const timer = setInterval(poll, intervalMs);
  return () => clearInterval(timer);
}
