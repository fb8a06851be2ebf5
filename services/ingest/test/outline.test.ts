/**
 * From PDF bytes to an outline, through the same worker threads the service uses: bookmarks,
 * headings by size, headings by weight only, page ranges, several documents, the real-world
 * fixture, and PDFs that cannot be read.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { createExtractPool, type ExtractResult } from "../src/extract-pool.ts";
import { PdfError } from "../src/pdf-text.ts";
import { coursePdf, corruptPdf, encryptedPdf, longCoursePdf, noTextPdf, REAL_WORLD_PDF, SAMPLE_CHAPTERS } from "./pdfs.ts";

const pool = createExtractPool(2);
afterAll(() => pool.close());

const extract = (...files: Uint8Array[]): Promise<ExtractResult> =>
  pool.run({ documents: files.map((bytes, i) => ({ filename: `doc-${i + 1}.pdf`, bytes })) });

const ranges = (result: ExtractResult) => result.outline.modules.map((m) => [m.startPage, m.endPage]);

describe("outline from bookmarks", () => {
  test("each bookmark is a module with its pages, summary and key terms", async () => {
    const { bytes } = await coursePdf({ bookmarks: true, headings: "none" });
    const result = await extract(bytes);
    expect(result.outline.sources).toEqual(["bookmarks"]);
    expect(result.documentPages).toEqual([8]);
    expect(result.outline.modules.map((m) => m.title)).toEqual(SAMPLE_CHAPTERS.map((c, i) => `${i + 1}. ${c.title}`));
    expect(ranges(result)).toEqual([
      [1, 2],
      [3, 4],
      [5, 6],
      [7, 8],
    ]);
    const hashing = result.outline.modules[2]!;
    expect(hashing.keyTerms.length).toBeGreaterThanOrEqual(3);
    expect(hashing.keyTerms.join(" ").toLowerCase()).toContain("hash");
    expect(hashing.keyTerms.join(" ").toLowerCase()).not.toContain("pointer");
    // Extractive: the summary is made of the chapter's own sentences.
    expect(hashing.summary.length).toBeGreaterThan(40);
    expect(hashing.summary.length).toBeLessThanOrEqual(500);
    expect(hashing.summary).toMatch(/hash table|hash function|collision|load factor/);
  });

  test("a single root bookmark wrapping the chapters gives the chapters", async () => {
    const { bytes } = await coursePdf({ bookmarks: true, bookmarkRoot: true });
    const result = await extract(bytes);
    expect(result.outline.modules.map((m) => m.title)).toEqual(SAMPLE_CHAPTERS.map((c, i) => `${i + 1}. ${c.title}`));
  });
});

describe("outline from headings", () => {
  test("larger headings split the modules; a title page that appears once is not a module", async () => {
    const { bytes, chapterPages } = await coursePdf({ headings: "large", titlePage: "CMPUT 201: Practical Programming Methodology" });
    const result = await extract(bytes);
    expect(result.outline.sources).toEqual(["headings"]);
    expect(result.outline.modules.map((m) => m.title)).toEqual(SAMPLE_CHAPTERS.map((c, i) => `${i + 1}. ${c.title}`));
    expect(result.outline.modules.map((m) => m.startPage)).toEqual(chapterPages);
    expect(result.outline.modules.at(-1)!.endPage).toBe(9);
  });

  test("headings set only in bold (same size as the text) are found by weight", async () => {
    const { bytes } = await coursePdf({ headings: "bold" });
    const progress: string[] = [];
    const result = await pool.run({ documents: [{ filename: "bold.pdf", bytes }] }, { onProgress: (step) => progress.push(step) });
    expect(result.outline.sources).toEqual(["headings"]);
    expect(result.outline.modules.map((m) => m.title)).toEqual(SAMPLE_CHAPTERS.map((c, i) => `${i + 1}. ${c.title}`));
    // Weights cost a second pass, which only documents without other structure pay for.
    expect(progress).toContain("headings");
  });

  test("without bookmarks or headings the document is split into page ranges", async () => {
    const { bytes } = await coursePdf({ headings: "none" });
    const result = await extract(bytes);
    expect(result.outline.sources).toEqual(["pages"]);
    const modules = result.outline.modules;
    expect(modules.length).toBe(2);
    expect(modules[0]!.startPage).toBe(1);
    expect(modules.at(-1)!.endPage).toBe(8);
    for (let i = 1; i < modules.length; i++) expect(modules[i]!.startPage).toBe(modules[i - 1]!.endPage + 1);
    expect(modules[0]!.title).toBe("Pages 1–4");
    for (const m of modules) expect(m.summary.length).toBeGreaterThan(40);
  });

  test("several documents: pages count on across them, in upload order", async () => {
    const first = await coursePdf({ bookmarks: true, chapters: SAMPLE_CHAPTERS.slice(0, 2) });
    const second = await coursePdf({ headings: "large", chapters: SAMPLE_CHAPTERS.slice(2) });
    const result = await extract(first.bytes, second.bytes);
    expect(result.documentPages).toEqual([4, 4]);
    expect(result.outline.pageCount).toBe(8);
    expect(result.outline.sources).toEqual(["bookmarks", "headings"]);
    expect(ranges(result)).toEqual([
      [1, 2],
      [3, 4],
      [5, 6],
      [7, 8],
    ]);
  });
});

describe("a real-world PDF (GNU Libtasn1 manual)", () => {
  test("its bookmarks become the modules, each with a summary and key terms from its text", async () => {
    const result = await extract(new Uint8Array(await Bun.file(REAL_WORLD_PDF).arrayBuffer()));
    expect(result.documentPages).toEqual([36]);
    expect(result.outline.sources).toEqual(["bookmarks"]);
    const titles = result.outline.modules.map((m) => m.title);
    expect(titles.slice(0, 4)).toEqual(["1 Introduction", "2 ASN.1 structure handling", "3 Utilities", "4 Function reference"]);
    const intro = result.outline.modules[0]!;
    expect(intro.startPage).toBe(4);
    expect(intro.summary).toContain("Libtasn1");
    const reference = result.outline.modules[3]!;
    expect(reference.endPage - reference.startPage).toBeGreaterThan(10);
    expect(reference.keyTerms.join(" ").toLowerCase()).toContain("asn1");
    for (const m of result.outline.modules) {
      expect(m.summary.length).toBeGreaterThan(20);
      expect(m.keyTerms.length).toBeGreaterThan(0);
      expect(m.endPage).toBeGreaterThanOrEqual(m.startPage);
    }
  });
});

describe("PDFs that cannot be read fail with a reason a person understands", () => {
  const failure = (promise: Promise<unknown>) => promise.then(() => undefined, (error: unknown) => error as PdfError);

  test("password protected", async () => {
    const error = await failure(extract(await encryptedPdf()));
    expect(error).toBeInstanceOf(PdfError);
    expect(error!.reason).toBe("PDF_ENCRYPTED");
    expect(error!.message).toContain("password");
  });

  test("damaged", async () => {
    const error = await failure(extract(corruptPdf()));
    expect(error!.reason).toBe("PDF_CORRUPT");
    expect(error!.message).toMatch(/doc-1\.pdf: the PDF could not be read/);
  });

  test("truncated (the second half lost)", async () => {
    const { bytes } = await coursePdf();
    const error = await failure(extract(bytes.slice(0, Math.floor(bytes.length / 2))));
    expect(error!.reason).toBe("PDF_CORRUPT");
    expect(error!.message).toContain("damaged or truncated");
  });

  test("pages without text (scans without OCR)", async () => {
    const error = await failure(extract(await noTextPdf()));
    expect(error!.reason).toBe("PDF_NO_TEXT");
    expect(error!.message).toContain("OCR");
  });
});

describe("progress and cancellation", () => {
  test("progress counts pages up to the total, never backwards", async () => {
    const bytes = await longCoursePdf(60);
    const seen: number[] = [];
    await pool.run({ documents: [{ filename: "long.pdf", bytes }] }, { onProgress: (step, done) => step === "text" && seen.push(done) });
    expect(seen[0]).toBe(0);
    expect(seen.at(-1)).toBe(60);
    for (let i = 1; i < seen.length; i++) expect(seen[i]!).toBeGreaterThanOrEqual(seen[i - 1]!);
  });

  test("aborting stops the worker thread at once, and the pool keeps working", async () => {
    const bytes = await longCoursePdf(100, "bold");
    const controller = new AbortController();
    const running = pool.run({ documents: [{ filename: "long.pdf", bytes }] }, { signal: controller.signal });
    await Bun.sleep(200);
    const abortedAt = performance.now();
    controller.abort(new Error("cancelled by the test"));
    await expect(running).rejects.toThrow("cancelled by the test");
    expect(performance.now() - abortedAt).toBeLessThan(250);
    const { bytes: small } = await coursePdf({ bookmarks: true });
    expect((await extract(small)).outline.modules.length).toBe(4);
  });
});
