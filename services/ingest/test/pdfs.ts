/**
 * Course PDFs generated for the tests with pdf-lib (the maintained @cantoo fork, which can also
 * encrypt): chapters with headings set larger or only in bold, with or without bookmarks, many
 * pages, password protected, damaged, or without any text.
 */
import { PDFDocument, PDFHexString, PDFName, StandardFonts, rgb, type PDFRef } from "@cantoo/pdf-lib";

export interface Chapter {
  title: string;
  /** Words that the chapter's sentences keep coming back to. */
  topics: string[];
  pages: number;
}

export const SAMPLE_CHAPTERS: Chapter[] = [
  { title: "Pointers and Memory", topics: ["pointer", "memory address", "heap allocation", "dangling pointer"], pages: 2 },
  { title: "Linked Lists", topics: ["linked list", "node", "head pointer", "traversal"], pages: 2 },
  { title: "Hash Tables", topics: ["hash table", "hash function", "collision", "load factor"], pages: 2 },
  { title: "Sorting Algorithms", topics: ["merge sort", "quicksort", "comparison", "stable sort"], pages: 2 },
];

export interface CoursePdfOptions {
  chapters?: Chapter[];
  /** `large`: 18 pt bold headings over 11 pt text; `bold`: 11 pt bold headings; `none`: no headings. */
  headings?: "large" | "bold" | "none";
  bookmarks?: boolean;
  /** Wrap the chapter bookmarks in one root entry ("Course notes"). */
  bookmarkRoot?: boolean;
  /** A title page (24 pt) before the first chapter. */
  titlePage?: string;
  /** Lines of text per page. */
  linesPerPage?: number;
}

const FILLER = [
  "This section explains how the idea is used in practice and why it matters for the assignments",
  "Students should work through the examples before the lab and compare their results with a partner",
  "The lecture notes give a short proof and then a worked example that uses the same notation",
  "Common mistakes are listed at the end together with the questions that came up in office hours",
];

function sentencesFor(chapter: Chapter, count: number, seed: number): string[] {
  const sentences: string[] = [];
  for (let i = 0; i < count; i++) {
    const topic = chapter.topics[(seed + i) % chapter.topics.length]!;
    const other = chapter.topics[(seed + i + 1) % chapter.topics.length]!;
    const filler = FILLER[(seed + i) % FILLER.length]!;
    sentences.push(`The ${topic} connects to the ${other} in this course. ${filler}.`);
  }
  return sentences;
}

/** Breaks text into lines of at most `width` characters. */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line && line.length + word.length + 1 > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}

/** A course PDF; returns its bytes and the (1-based) first page of each chapter. */
export async function coursePdf(options: CoursePdfOptions = {}): Promise<{ bytes: Uint8Array; chapterPages: number[] }> {
  const chapters = options.chapters ?? SAMPLE_CHAPTERS;
  const headings = options.headings ?? "large";
  const linesPerPage = options.linesPerPage ?? 30;
  const doc = await PDFDocument.create();
  doc.setTitle("Generated course notes");
  const regular = await doc.embedFont(StandardFonts.Helvetica);
  const bold = await doc.embedFont(StandardFonts.HelveticaBold);
  const chapterPageRefs: PDFRef[] = [];
  const chapterPages: number[] = [];

  if (options.titlePage) {
    const page = doc.addPage([612, 792]);
    page.drawText(options.titlePage, { x: 72, y: 600, size: 24, font: bold });
    page.drawText("Course notes for the term", { x: 72, y: 560, size: 11, font: regular });
  }
  chapters.forEach((chapter, c) => {
    const lines = wrap(sentencesFor(chapter, chapter.pages * linesPerPage, c).join(" "), 90);
    for (let p = 0; p < chapter.pages; p++) {
      const page = doc.addPage([612, 792]);
      let y = 740;
      if (p === 0) {
        chapterPageRefs.push(page.ref);
        chapterPages.push(doc.getPageCount());
        if (headings !== "none") {
          page.drawText(`${c + 1}. ${chapter.title}`, { x: 72, y, size: headings === "large" ? 18 : 11, font: bold });
          y -= headings === "large" ? 30 : 18;
        }
      }
      for (const line of lines.slice(p * linesPerPage, (p + 1) * linesPerPage)) {
        if (y < 60) break;
        page.drawText(line, { x: 72, y, size: 11, font: regular });
        y -= 14;
      }
      page.drawText(`Page ${doc.getPageCount()}`, { x: 290, y: 30, size: 9, font: regular });
    }
  });
  if (options.bookmarks) addBookmarks(doc, chapters.map((c, i) => ({ title: `${i + 1}. ${c.title}`, page: chapterPageRefs[i]! })), options.bookmarkRoot);
  return { bytes: await doc.save(), chapterPages };
}

/** Writes a document outline (bookmarks), optionally under one root entry. */
function addBookmarks(doc: PDFDocument, entries: { title: string; page: PDFRef }[], root = false): void {
  const context = doc.context;
  const outlines = context.nextRef();
  const link = (parent: PDFRef, items: { title: string; page: PDFRef; children?: { title: string; page: PDFRef }[] }[]) => {
    const refs = items.map(() => context.nextRef());
    items.forEach((item, i) => {
      const fields: Record<string, unknown> = {
        Title: PDFHexString.fromText(item.title),
        Parent: parent,
        Dest: [item.page, "XYZ", null, null, null],
      };
      if (i > 0) fields.Prev = refs[i - 1];
      if (i < items.length - 1) fields.Next = refs[i + 1];
      if (item.children?.length) {
        const children = link(refs[i]!, item.children);
        fields.First = children[0];
        fields.Last = children[children.length - 1];
        fields.Count = children.length;
      }
      context.assign(refs[i]!, context.obj(fields as never));
    });
    return refs;
  };
  const top = root ? [{ title: "Course notes", page: entries[0]!.page, children: entries }] : entries;
  const refs = link(outlines, top);
  context.assign(outlines, context.obj({ Type: "Outlines", First: refs[0]!, Last: refs[refs.length - 1]!, Count: refs.length }));
  doc.catalog.set(PDFName.of("Outlines"), outlines);
}

/** A course PDF with `pages` pages and a large heading every 20 pages. */
export async function longCoursePdf(pages: number, headings: "large" | "bold" = "large"): Promise<Uint8Array> {
  const topics = [
    ["recursion", "base case", "call stack"],
    ["binary tree", "traversal", "balanced tree"],
    ["graph", "breadth-first search", "shortest path"],
    ["dynamic programming", "memoization", "subproblem"],
  ];
  const chapters: Chapter[] = [];
  for (let i = 0; i * 20 < pages; i++) {
    chapters.push({ title: `Unit ${i + 1}`, topics: topics[i % topics.length]!, pages: Math.min(20, pages - i * 20) });
  }
  return (await coursePdf({ chapters, headings, linesPerPage: 44 })).bytes;
}

/** A password-protected PDF (RC4/AES standard security handler). */
export async function encryptedPdf(): Promise<Uint8Array> {
  const doc = await PDFDocument.load((await coursePdf()).bytes);
  doc.encrypt({ userPassword: "letmein", ownerPassword: "owner-secret" });
  return doc.save();
}

/** A PDF whose body is damaged: the header is right, the rest is noise. */
export function corruptPdf(): Uint8Array {
  const noise = new Uint8Array(8192);
  let seed = 7;
  for (let i = 0; i < noise.length; i++) noise[i] = (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24;
  return Buffer.concat([Buffer.from("%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"), noise]);
}

/** A PDF of pages with drawings only (like scanned pages without OCR): nothing to read. */
export async function noTextPdf(): Promise<Uint8Array> {
  const doc = await PDFDocument.create();
  for (let i = 0; i < 2; i++) {
    const page = doc.addPage([612, 792]);
    page.drawRectangle({ x: 72, y: 400, width: 300, height: 200, color: rgb(0.2, 0.3, 0.6) });
  }
  return doc.save();
}

/** The real-world fixture: the GNU Libtasn1 manual (GFDL 1.3; see fixtures/README.md). */
export const REAL_WORLD_PDF = new URL("./fixtures/libtasn1.pdf", import.meta.url).pathname;
