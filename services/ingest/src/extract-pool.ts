/**
 * A bounded pool of worker threads that read PDFs and build outlines. A cancelled or timed-out
 * job's thread is terminated on the spot (PDF parsing cannot be interrupted from inside), and a
 * fresh one takes its place for the next job.
 */
import type { BuiltOutline } from "./outline.ts";
import { PdfError } from "./pdf-text.ts";

export interface ExtractRequest {
  documents: { filename: string; bytes: Uint8Array }[];
  /** Nice value of the worker thread (0–19); set by the pool. */
  niceness?: number;
}

export type ExtractStep = "text" | "headings" | "outline";

export type ExtractResponse =
  | { type: "progress"; step: ExtractStep; done: number; total: number }
  | { type: "result"; outline: BuiltOutline; documentPages: number[] }
  | { type: "error"; reason: PdfError["reason"] | "PROCESSING_FAILED"; message: string };

export interface ExtractResult {
  outline: BuiltOutline;
  /** Pages of each document, in upload order. */
  documentPages: number[];
}

export interface ExtractOptions {
  signal?: AbortSignal;
  onProgress?: (step: ExtractStep, done: number, total: number) => void;
}

/** A processing failure that is not the PDF's fault (the worker thread died, a bug); worth retrying. */
export class ExtractFailed extends Error {
  override name = "ExtractFailed";
}

export interface ExtractPool {
  readonly size: number;
  /** Reads the documents on a free worker thread (waiting for one if all are busy). */
  run(request: ExtractRequest, options?: ExtractOptions): Promise<ExtractResult>;
  /** Starts every thread now, so the first jobs do not wait for PDF.js to load. */
  warm(): void;
  /** Terminates every thread; running jobs reject. */
  close(): Promise<void>;
}

/** Buffers the caller hands over whole (moved, not copied); views into a larger buffer are copied. */
function transferable(request: ExtractRequest): ArrayBuffer[] {
  const buffers = new Set<ArrayBuffer>();
  for (const { bytes } of request.documents) {
    if (bytes.buffer instanceof ArrayBuffer && bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength) buffers.add(bytes.buffer);
  }
  return [...buffers];
}

const WORKER_URL = new URL("./extract-worker.ts", import.meta.url).href;

/**
 * Starts a pool of at most `size` worker threads, created when first needed and kept warm, running
 * at `niceness` so the thread that answers uploads goes first on busy cores.
 */
export function createExtractPool(size: number, niceness = 0): ExtractPool {
  const idle: Worker[] = [];
  const busy = new Set<Worker>();
  const waiting: (() => void)[] = [];
  let closed = false;

  async function acquire(signal?: AbortSignal): Promise<Worker> {
    while (idle.length === 0 && busy.size >= size) {
      signal?.throwIfAborted();
      await new Promise<void>((resolve) => waiting.push(resolve));
      if (closed) throw new ExtractFailed("the extraction pool is closed");
    }
    const worker = idle.pop() ?? new Worker(WORKER_URL);
    busy.add(worker);
    return worker;
  }

  function release(worker: Worker, reusable: boolean) {
    busy.delete(worker);
    if (reusable && !closed) idle.push(worker);
    else worker.terminate();
    waiting.shift()?.();
  }

  return {
    size,
    async run(request, options = {}) {
      if (closed) throw new ExtractFailed("the extraction pool is closed");
      const worker = await acquire(options.signal);
      return new Promise<ExtractResult>((resolve, reject) => {
        let settled = false;
        const finish = (reusable: boolean, outcome: () => void) => {
          if (settled) return;
          settled = true;
          worker.onmessage = null;
          worker.onerror = null;
          options.signal?.removeEventListener("abort", onAbort);
          release(worker, reusable);
          outcome();
        };
        const onAbort = () => finish(false, () => reject(options.signal!.reason ?? new Error("aborted")));
        if (options.signal?.aborted) return onAbort();
        options.signal?.addEventListener("abort", onAbort, { once: true });
        worker.onmessage = (event: MessageEvent<ExtractResponse>) => {
          const message = event.data;
          if (message.type === "progress") options.onProgress?.(message.step, message.done, message.total);
          else if (message.type === "result") finish(true, () => resolve({ outline: message.outline, documentPages: message.documentPages }));
          else if (message.reason === "PROCESSING_FAILED") finish(false, () => reject(new ExtractFailed(message.message)));
          else finish(true, () => reject(new PdfError(message.reason as PdfError["reason"], message.message)));
        };
        worker.onerror = (event: ErrorEvent) => finish(false, () => reject(new ExtractFailed(`the PDF worker thread failed: ${event.message}`)));
        worker.postMessage({ ...request, niceness }, transferable(request));
      });
    },
    warm() {
      while (!closed && idle.length + busy.size < size) idle.push(new Worker(WORKER_URL));
    },
    async close() {
      closed = true;
      for (const worker of [...idle, ...busy]) worker.terminate();
      idle.length = 0;
      busy.clear();
      for (const wake of waiting.splice(0)) wake();
    },
  };
}
