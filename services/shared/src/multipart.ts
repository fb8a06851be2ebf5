/** Reading a multipart request body with backpressure, for the HTTP upload endpoints (ingest, web). */
import type { BusboyInstance } from "@fastify/busboy";

/**
 * Feeds `body` into a busboy parser, waiting for it to drain, until the body ends (then waits for
 * the parser to finish) or `stopped()` turns true (then the rest of the body is not read, so an
 * upload that broke a rule is refused without reading it all). Returns whether the whole body was
 * read. A broken body rejects.
 */
export async function feedMultipart(body: ReadableStream<Uint8Array>, busboy: BusboyInstance, stopped: () => boolean): Promise<boolean> {
  const finished = new Promise<void>((resolve, reject) => {
    busboy.on("finish", resolve);
    busboy.on("error", reject);
  });
  finished.catch(() => {});
  const reader = body.getReader();
  try {
    while (!stopped()) {
      const { done, value } = await reader.read();
      if (done) {
        busboy.end();
        await finished;
        return true;
      }
      if (!busboy.write(value)) await new Promise((resolve) => busboy.once("drain", resolve));
    }
  } catch (error) {
    await reader.cancel().catch(() => {});
    throw error;
  }
  await reader.cancel().catch(() => {});
  return false;
}
