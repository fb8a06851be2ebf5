/**
 * Text out of a PDF with pdfjs-dist: lines per page with their font size and weight, and the
 * document's bookmarks. Everything pdfjs needs (its worker code, standard fonts, CMaps, wasm
 * decoders) is read from the installed package, so nothing is fetched.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { getDocument, type PDFDocumentProxy } from "pdfjs-dist/legacy/build/pdf.mjs";

const PDFJS_ROOT = join(dirname(fileURLToPath(import.meta.resolve("pdfjs-dist/package.json"))), "/");
const PDFJS_ASSETS = {
  standardFontDataUrl: join(PDFJS_ROOT, "standard_fonts/"),
  cMapUrl: join(PDFJS_ROOT, "cmaps/"),
  cMapPacked: true,
  wasmUrl: join(PDFJS_ROOT, "wasm/"),
};

/** Why a PDF could not be read; the reasons are coursemesh.ingest.v1.ErrorReason names. */
export class PdfError extends Error {
  override name = "PdfError";
  constructor(
    readonly reason: "PDF_CORRUPT" | "PDF_ENCRYPTED" | "PDF_NO_TEXT",
    message: string,
  ) {
    super(message);
  }
}

/** One line of text as laid out on the page. */
export interface TextLine {
  text: string;
  /** Font size in points (the largest on the line). */
  size: number;
  /** Every glyph on the line is in a bold (or heavier) face. */
  bold: boolean;
}

export interface PageText {
  lines: TextLine[];
}

/** A bookmark (outline entry) of the PDF, resolved to a page. */
export interface Bookmark {
  title: string;
  /** 0-based page index within the document. */
  pageIndex: number;
  /** 0 for top-level entries. */
  depth: number;
}

export interface ExtractedDocument {
  pageCount: number;
  pages: PageText[];
  bookmarks: Bookmark[];
}

/** A PDF opened for extraction; `close()` frees pdfjs's caches. */
export interface OpenedPdf {
  pageCount: number;
  bookmarks: Bookmark[];
  /** Reads one page (0-based); font weights need the page's fonts, which costs more. */
  readPage(index: number, withWeights: boolean): Promise<PageText>;
  close(): Promise<void>;
}

const BOLD_FONT = /bold|black|heavy|semibold|demibold|extrabold|ultrabold|-bd\b|[+-]?cmbx|\bbd\b|,b\b/i;

/** Whether a font name (e.g. "ABCDEF+Helvetica-Bold", "CMBX12") names a bold face. */
export function isBoldFontName(name: string | undefined): boolean {
  return Boolean(name && BOLD_FONT.test(name));
}

function describeOpenError(error: unknown): PdfError {
  const name = (error as { name?: string })?.name;
  if (name === "PasswordException") {
    return new PdfError("PDF_ENCRYPTED", "the PDF is password protected; upload a copy without a password");
  }
  const detail = error instanceof Error ? error.message : String(error);
  return new PdfError("PDF_CORRUPT", `the PDF could not be read (${detail}); it may be damaged or truncated, so export or download it again`);
}

/** Opens a PDF; throws PdfError for encrypted or unreadable files. */
export async function openPdf(bytes: Uint8Array): Promise<OpenedPdf> {
  const task = getDocument({
    // pdfjs takes ownership of (and may detach) the buffer: callers hand over bytes they are done with.
    data: bytes,
    ...PDFJS_ASSETS,
    disableFontFace: true,
    useSystemFonts: false,
    fontExtraProperties: true,
    stopAtErrors: false,
    verbosity: 0,
  });
  let doc: PDFDocumentProxy;
  try {
    doc = await task.promise;
  } catch (error) {
    await task.destroy().catch(() => {});
    throw describeOpenError(error);
  }
  const bookmarks = await readBookmarks(doc).catch(() => []);
  return {
    pageCount: doc.numPages,
    bookmarks,
    async readPage(index, withWeights) {
      try {
        const page = await doc.getPage(index + 1);
        // Font names come with the page's operator list; text content alone names fonts g_d0_f1….
        if (withWeights) await page.getOperatorList();
        const content = await page.getTextContent();
        const fontNames = new Map<string, string | undefined>();
        const fontName = (id: string) => {
          if (!withWeights) return undefined;
          if (!fontNames.has(id)) {
            const font = page.commonObjs.has(id) ? (page.commonObjs.get(id) as { name?: string }) : undefined;
            fontNames.set(id, font?.name);
          }
          return fontNames.get(id);
        };
        const lines = toLines(content.items as RawItem[], fontName);
        page.cleanup();
        return { lines };
      } catch (error) {
        throw describeOpenError(error);
      }
    },
    async close() {
      await task.destroy();
    },
  };
}

interface RawItem {
  str?: string;
  transform?: number[];
  height?: number;
  fontName?: string;
  hasEOL?: boolean;
}

/** Groups pdfjs text items into lines: a new line at an end-of-line mark or a baseline jump. */
function toLines(items: RawItem[], fontName: (id: string) => string | undefined): TextLine[] {
  const lines: TextLine[] = [];
  let text = "";
  let size = 0;
  let bold = true;
  let baseline: number | undefined;
  const flush = () => {
    const clean = text.replace(/\s+/g, " ").trim();
    if (clean) lines.push({ text: clean, size: Math.round(size * 10) / 10, bold });
    text = "";
    size = 0;
    bold = true;
    baseline = undefined;
  };
  for (const item of items) {
    if (typeof item.str !== "string" || !item.transform) continue;
    const [, , c = 0, d = 0, , y = 0] = item.transform;
    const itemSize = Math.hypot(c, d) || item.height || 0;
    if (baseline !== undefined && item.str.trim() && Math.abs(y - baseline) > Math.max(itemSize, size) * 0.6) flush();
    if (item.str.trim()) {
      baseline ??= y;
      size = Math.max(size, itemSize);
      if (!isBoldFontName(item.fontName ? fontName(item.fontName) : undefined)) bold = false;
    }
    text += item.str;
    if (item.hasEOL) flush();
  }
  flush();
  return lines;
}

interface RawOutlineItem {
  title: string;
  dest: string | unknown[] | null;
  items: RawOutlineItem[];
}

async function readBookmarks(doc: PDFDocumentProxy): Promise<Bookmark[]> {
  const outline = (await doc.getOutline()) as RawOutlineItem[] | null;
  if (!outline) return [];
  const bookmarks: Bookmark[] = [];
  const visit = async (items: RawOutlineItem[], depth: number) => {
    for (const item of items) {
      const pageIndex = await resolvePage(doc, item.dest);
      const title = item.title.replace(/\s+/g, " ").trim();
      if (pageIndex !== undefined && title) bookmarks.push({ title, pageIndex, depth });
      if (depth < 3 && item.items.length) await visit(item.items, depth + 1);
    }
  };
  await visit(outline, 0);
  return bookmarks;
}

async function resolvePage(doc: PDFDocumentProxy, dest: RawOutlineItem["dest"]): Promise<number | undefined> {
  try {
    const explicit = typeof dest === "string" ? await doc.getDestination(dest) : dest;
    const target = explicit?.[0];
    if (typeof target === "number") return target;
    if (target && typeof target === "object" && "num" in target) return await doc.getPageIndex(target as { num: number; gen: number });
  } catch {
    // A bookmark pointing nowhere is left out rather than failing the document.
  }
  return undefined;
}
