/**
 * Streams a browser's multipart upload straight into ingest's UploadDocument: the job header, then
 * each file's header and bytes, with backpressure from the gRPC stream back to the request body,
 * so a file is never held whole in memory. The CSRF field must come before the first file.
 */
import Busboy from "@fastify/busboy";
import type * as grpc from "@grpc/grpc-js";
import type { UploadDocumentRequest, UploadDocumentResponse } from "@coursemesh/proto/coursemesh/ingest/v1/ingest.ts";
import { feedMultipart } from "@coursemesh/shared/multipart.ts";

/** Why the dashboard refused an upload before ingest saw all of it. */
export class UploadRefused extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

export interface UploadOptions {
  maxBytes: number;
  /** Whether the form's CSRF field is right; checked before any file is sent on. */
  csrfValid(value: string): boolean;
  /** Opens the UploadDocument call (with the user's token). */
  open(callback: (error: grpc.ServiceError | null, response: UploadDocumentResponse) => void): grpc.ClientWritableStream<UploadDocumentRequest>;
}

const CHUNK_BYTES = 256 * 1024;

/** Sends the upload on; resolves with ingest's answer or rejects with its error (or an UploadRefused). */
export async function streamUpload(request: Request, options: UploadOptions): Promise<UploadDocumentResponse> {
  const contentType = request.headers.get("content-type") ?? "";
  if (!/^multipart\/form-data/i.test(contentType) || !request.body) throw new UploadRefused(400, "Choose at least one PDF to upload.", "files");
  const declared = Number(request.headers.get("content-length") ?? NaN);
  if (Number.isFinite(declared) && declared > options.maxBytes + 64 * 1024) throw tooLarge(options.maxBytes);

  const fields: Record<string, string> = {};
  let call: grpc.ClientWritableStream<UploadDocumentRequest> | undefined;
  let answer: Promise<UploadDocumentResponse> | undefined;
  let failure: unknown;
  let total = 0;

  const openCall = () => {
    if (call) return call;
    if (!options.csrfValid(fields.csrf ?? "")) throw new UploadRefused(403, "The form is out of date (CSRF check failed); reload the page and try again.");
    answer = new Promise((resolve, reject) => {
      call = options.open((error, response) => (error ? reject(error) : resolve(response)));
    });
    // Ingest refused mid-stream (not a PDF, too large, queue full): stop reading the rest.
    answer.catch((error) => {
      failure ??= error;
    });
    call!.write({ chunk: { $case: "job", value: { courseTitle: fields.course_title ?? "", idempotencyKey: fields.idempotency_key ?? "" } } });
    return call!;
  };

  const busboy = Busboy({ headers: { "content-type": contentType }, limits: { fieldSize: 16 * 1024, fields: 10, headerPairs: 100 } });
  busboy.on("field", (name, value) => {
    fields[name] = value;
  });
  busboy.on("file", (name, stream, filename, _encoding, mimeType) => {
    if (failure || name !== "files" || !filename) {
      stream.resume();
      return;
    }
    let upstream: grpc.ClientWritableStream<UploadDocumentRequest>;
    try {
      upstream = openCall();
    } catch (error) {
      failure = error;
      stream.resume();
      return;
    }
    upstream.write({ chunk: { $case: "file", value: { filename, contentType: mimeType } } });
    stream.on("data", (chunk: Buffer) => {
      if (failure) return;
      total += chunk.length;
      if (total > options.maxBytes) {
        failure = tooLarge(options.maxBytes);
        return;
      }
      for (let offset = 0; offset < chunk.length; offset += CHUNK_BYTES) {
        const more = upstream.write({ chunk: { $case: "data", value: chunk.subarray(offset, offset + CHUNK_BYTES) } });
        if (!more) {
          // Ingest is slower than the browser: stop reading until the gRPC stream drains.
          stream.pause();
          upstream.once("drain", () => stream.resume());
        }
      }
    });
  });

  try {
    await feedMultipart(request.body, busboy, () => failure !== undefined);
  } catch (error) {
    failure ??= new UploadRefused(400, `The upload could not be read: ${error instanceof Error ? error.message : String(error)}`, "files");
  }
  if (failure) {
    call?.cancel();
    answer?.catch(() => {});
    throw failure;
  }
  // No file at all: ingest still gets the job header, and answers with its own message.
  openCall().end();
  return answer!;
}

function tooLarge(maxBytes: number): UploadRefused {
  return new UploadRefused(413, `The upload is larger than ${Math.floor(maxBytes / (1024 * 1024))} MiB, the most one upload may be.`, "files");
}
