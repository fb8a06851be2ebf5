/**
 * The rules an upload is held to while it streams in: size, PDF by content, order, titles.
 */
import { describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import type { ServiceError } from "@coursemesh/shared/grpc/errors.ts";
import { MAX_FILES_PER_UPLOAD, UploadReceiver } from "../src/upload.ts";

const PDF_START = Buffer.from("%PDF-1.7\n");
const caught = (fn: () => unknown): ServiceError => {
  try {
    fn();
  } catch (error) {
    return error as ServiceError;
  }
  throw new Error("expected an error");
};

describe("UploadReceiver", () => {
  test("takes several files and hashes each", () => {
    const receiver = new UploadReceiver({ maxBytes: 1024 * 1024 });
    receiver.header("  CMPUT 201:   Practical Programming  ", "key-1");
    receiver.startFile("notes/week1.pdf", "application/pdf");
    receiver.data(PDF_START);
    receiver.data(Buffer.from("rest of week 1"));
    receiver.startFile("C:\\Users\\ada\\week2.pdf", "");
    receiver.data(Buffer.concat([PDF_START, Buffer.from("week 2")]));
    const upload = receiver.finish();
    expect(upload.courseTitle).toBe("CMPUT 201: Practical Programming");
    expect(upload.idempotencyKey).toBe("key-1");
    expect(upload.files.map((f) => [f.filename, f.contentType, f.size])).toEqual([
      ["week1.pdf", "application/pdf", PDF_START.length + 14],
      ["week2.pdf", "application/pdf", PDF_START.length + 6],
    ]);
    expect(upload.files[0]!.sha256).toBe(createHash("sha256").update(Buffer.concat([PDF_START, Buffer.from("rest of week 1")])).digest("hex"));
  });

  test("refuses an oversized upload at the chunk that crosses the limit, not at the end", () => {
    const receiver = new UploadReceiver({ maxBytes: 100_000 });
    receiver.header("Big", "");
    receiver.startFile("a.pdf", "application/pdf");
    receiver.data(Buffer.concat([PDF_START, Buffer.alloc(60_000)]));
    receiver.startFile("b.pdf", "application/pdf");
    const error = caught(() => receiver.data(Buffer.concat([PDF_START, Buffer.alloc(50_000)])));
    expect(error.reason).toBe("FILE_TOO_LARGE");
    expect(error.message).toContain("100000 bytes");
  });

  test("refuses a file that is not a PDF after its first KiB, before the rest arrives", () => {
    const receiver = new UploadReceiver({ maxBytes: 1024 * 1024 });
    receiver.header("Course", "");
    receiver.startFile("photo.jpg", "application/pdf");
    const error = caught(() => receiver.data(Buffer.alloc(4096, 0xff)));
    expect(error.reason).toBe("NOT_A_PDF");
    expect(error.message).toContain("photo.jpg is not a PDF");
  });

  test("a short file that never shows %PDF- is refused at its end; a header after a few stray bytes is fine", () => {
    const short = new UploadReceiver({ maxBytes: 1024 });
    short.header("Course", "");
    short.startFile("notes.txt", "text/plain");
    short.data(Buffer.from("just some text"));
    expect(caught(() => short.finish()).reason).toBe("NOT_A_PDF");

    const padded = new UploadReceiver({ maxBytes: 4096 });
    padded.header("Course", "");
    padded.startFile("padded.pdf", "application/pdf");
    padded.data(Buffer.from("\r\n\r\n"));
    padded.data(PDF_START);
    expect(padded.finish().files).toHaveLength(1);
  });

  test("order, emptiness and titles", () => {
    const noFile = new UploadReceiver({ maxBytes: 1024 });
    noFile.header("Course", "");
    expect(caught(() => noFile.data(PDF_START)).reason).toBe("UPLOAD_OUT_OF_ORDER");
    expect(caught(() => noFile.finish()).reason).toBe("NO_FILES");

    const empty = new UploadReceiver({ maxBytes: 1024 });
    empty.header("Course", "");
    empty.startFile("empty.pdf", "application/pdf");
    expect(caught(() => empty.finish()).reason).toBe("NO_FILES");

    expect(caught(() => new UploadReceiver({ maxBytes: 1 }).header("   ", "")).reason).toBe("COURSE_TITLE_REQUIRED");
    expect(caught(() => new UploadReceiver({ maxBytes: 1 }).header("x".repeat(301), "")).reason).toBe("COURSE_TITLE_TOO_LONG");

    const untitled = new UploadReceiver({ maxBytes: 1024 });
    untitled.startFile("a.pdf", "application/pdf");
    untitled.data(PDF_START);
    expect(caught(() => untitled.finish()).reason).toBe("COURSE_TITLE_REQUIRED");
  });

  test(`at most ${MAX_FILES_PER_UPLOAD} files`, () => {
    const receiver = new UploadReceiver({ maxBytes: 1024 * 1024 });
    receiver.header("Course", "");
    for (let i = 0; i < MAX_FILES_PER_UPLOAD; i++) {
      receiver.startFile(`${i}.pdf`, "application/pdf");
      receiver.data(PDF_START);
    }
    expect(caught(() => receiver.startFile("one-too-many.pdf", "application/pdf")).reason).toBe("TOO_MANY_FILES");
  });
});
