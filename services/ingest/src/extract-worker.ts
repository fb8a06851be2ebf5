/**
 * Worker thread: reads a job's PDFs and builds the outline, off the thread that answers uploads
 * and RPCs. Messages in and out are described in extract-pool.ts.
 */
import { setPriority } from "node:os";
import { buildOutline, type DocumentText } from "./outline.ts";
import { openPdf, PdfError, type OpenedPdf, type PageText } from "./pdf-text.ts";
import type { ExtractRequest, ExtractResponse } from "./extract-pool.ts";

declare const self: Worker;

let niceness = 0;

/** On Linux this sets the priority of the calling thread only: the main thread's uploads and RPCs go first. */
function lowerPriority(value: number): void {
  if (value === niceness) return;
  try {
    setPriority(value);
    niceness = value;
  } catch {
    // Not permitted in some sandboxes; processing still works, just at normal priority.
  }
}

const PROGRESS_EVERY_MS = 100;

function post(message: ExtractResponse): void {
  self.postMessage(message);
}

async function readPages(pdf: OpenedPdf, withWeights: boolean, step: "text" | "headings", counter: { done: number; total: number; at: number }): Promise<PageText[]> {
  const pages: PageText[] = [];
  for (let i = 0; i < pdf.pageCount; i++) {
    pages.push(await pdf.readPage(i, withWeights));
    counter.done++;
    const now = performance.now();
    if (now - counter.at >= PROGRESS_EVERY_MS || counter.done === counter.total) {
      counter.at = now;
      post({ type: "progress", step, done: counter.done, total: counter.total });
    }
  }
  return pages;
}

async function extract(request: ExtractRequest): Promise<ExtractResponse> {
  const opened: OpenedPdf[] = [];
  try {
    for (const document of request.documents) {
      try {
        opened.push(await openPdf(document.bytes));
      } catch (error) {
        if (error instanceof PdfError) throw new PdfError(error.reason, `${document.filename}: ${error.message}`);
        throw error;
      }
    }
    const total = opened.reduce((sum, pdf) => sum + pdf.pageCount, 0);
    const counter = { done: 0, total, at: 0 };
    post({ type: "progress", step: "text", done: 0, total });
    const texts: DocumentText[] = [];
    for (const pdf of opened) texts.push({ pages: await readPages(pdf, false, "text", counter), bookmarks: pdf.bookmarks });

    const letters = texts.reduce((sum, t) => sum + t.pages.reduce((s, p) => s + p.lines.reduce((n, l) => n + (l.text.match(/\p{L}/gu)?.length ?? 0), 0), 0), 0);
    if (letters < 20) {
      throw new PdfError("PDF_NO_TEXT", "no text could be read from the PDF (scanned pages only?); upload a PDF with selectable text, e.g. after OCR");
    }

    post({ type: "progress", step: "outline", done: 0, total: 1 });
    let outline = buildOutline(texts);
    // Headings set only in bold need the pages' font names, which cost a second, slower pass; only
    // documents without bookmarks or larger headings pay for it.
    const unsplit = outline.sources.flatMap((source, i) => (source === "pages" && texts[i]!.pages.length > 1 ? [i] : []));
    if (unsplit.length > 0) {
      const again = { done: 0, total: unsplit.reduce((sum, i) => sum + opened[i]!.pageCount, 0), at: 0 };
      for (const i of unsplit) texts[i] = { ...texts[i]!, pages: await readPages(opened[i]!, true, "headings", again) };
      outline = buildOutline(texts);
    }
    return { type: "result", outline, documentPages: opened.map((pdf) => pdf.pageCount) };
  } finally {
    await Promise.all(opened.map((pdf) => pdf.close().catch(() => {})));
  }
}

self.onmessage = async (event: MessageEvent<ExtractRequest>) => {
  lowerPriority(event.data.niceness ?? 0);
  try {
    post(await extract(event.data));
  } catch (error) {
    if (error instanceof PdfError) post({ type: "error", reason: error.reason, message: error.message });
    else post({ type: "error", reason: "PROCESSING_FAILED", message: error instanceof Error ? error.message : String(error) });
  }
};
