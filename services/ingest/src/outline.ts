/**
 * A course outline from extracted PDF text, with no I/O: modules from bookmarks when the PDF has
 * them, else from headings found by font size and weight, else from page ranges; per module a
 * title, an extractive summary, key terms and its pages.
 */
import type { Bookmark, PageText, TextLine } from "./pdf-text.ts";

export interface DocumentText {
  pages: PageText[];
  bookmarks: Bookmark[];
}

export interface OutlineModule {
  title: string;
  summary: string;
  keyTerms: string[];
  /** 1-based, counting across the job's documents in upload order. */
  startPage: number;
  /** Inclusive. */
  endPage: number;
}

export type OutlineSource = "bookmarks" | "headings" | "pages";

export interface BuiltOutline {
  modules: OutlineModule[];
  pageCount: number;
  /** How each document was split, in upload order. */
  sources: OutlineSource[];
}

/** Where a module starts and ends inside one document (0-based pages and lines). */
interface Section {
  title: string;
  startPage: number;
  /** Line of startPage where the module begins (its heading, when the page shows one). */
  headingLine: number;
  /** First line of the module's body on startPage. */
  startLine: number;
  /** Page and line where the next module begins (exclusive), or the end of the document. */
  endPage: number;
  endLine: number;
}

const MAX_MODULES_PER_DOCUMENT = 60;
const SUMMARY_MAX_CHARS = 480;
const KEY_TERMS = 6;

/** Builds the outline of a job's documents; `pageCount` is the sum of their pages. */
export function buildOutline(documents: DocumentText[]): BuiltOutline {
  const drafts: { title: string; startPage: number; endPage: number; text: string }[] = [];
  const sources: OutlineSource[] = [];
  let offset = 0;
  for (const document of documents) {
    const boilerplate = repeatedLines(document.pages);
    const { sections, source } = splitDocument(document, boilerplate);
    sources.push(source);
    for (const section of sections) {
      drafts.push({
        title: section.title,
        startPage: offset + section.startPage + 1,
        endPage: offset + section.endPage + 1,
        text: sectionText(document.pages, section, boilerplate),
      });
    }
    offset += document.pages.length;
  }
  const corpus = drafts.map((d) => analyse(d.text));
  const documentFrequency = new Map<string, number>();
  for (const analysis of corpus) for (const term of analysis.counts.keys()) documentFrequency.set(term, (documentFrequency.get(term) ?? 0) + 1);
  const weights = new Map<string, number>();
  const weight = (term: string) => {
    let value = weights.get(term);
    if (value === undefined) weights.set(term, (value = Math.log((drafts.length + 1) / ((documentFrequency.get(term) ?? 0) + 1)) + 1));
    return value;
  };
  const modules = drafts.map((draft, i) => ({
    title: draft.title,
    startPage: draft.startPage,
    endPage: draft.endPage,
    summary: summarize(corpus[i]!, weight),
    keyTerms: keyTerms(corpus[i]!, weight),
  }));
  return { modules, pageCount: offset, sources };
}

function splitDocument(document: DocumentText, boilerplate: Set<string>): { sections: Section[]; source: OutlineSource } {
  const pageCount = document.pages.length;
  if (pageCount === 0) return { sections: [], source: "pages" };
  const fromBookmarks = sectionsFromBookmarks(document);
  if (fromBookmarks.length >= 2) return { sections: fromBookmarks, source: "bookmarks" };
  const fromHeadings = sectionsFromHeadings(document.pages, boilerplate);
  if (fromHeadings.length >= 2) return { sections: fromHeadings, source: "headings" };
  return { sections: sectionsFromPageRanges(document.pages), source: "pages" };
}

/** Closes each section where the next one starts; the last runs to the end of the document. */
function closeSections(starts: Omit<Section, "endPage" | "endLine">[], pages: PageText[]): Section[] {
  const sorted = [...starts].sort((a, b) => a.startPage - b.startPage || a.headingLine - b.headingLine);
  return sorted.map((start, i) => {
    const next = sorted[i + 1];
    if (!next) return { ...start, endPage: pages.length - 1, endLine: pages[pages.length - 1]!.lines.length };
    // A module that ends exactly where a page begins does not reach into that page.
    const endPage = next.headingLine === 0 && next.startPage > start.startPage ? next.startPage - 1 : next.startPage;
    return { ...start, endPage, endLine: next.startPage === endPage ? next.headingLine : pages[endPage]!.lines.length };
  });
}

const normalize = (text: string) => text.toLowerCase().replace(/[^\p{L}\p{N}]+/gu, " ").trim();

function sectionsFromBookmarks({ bookmarks, pages }: DocumentText): Section[] {
  const valid = bookmarks.filter((b) => b.pageIndex >= 0 && b.pageIndex < pages.length);
  // One root entry wrapping everything ("Course notes" → chapters): its children are the modules.
  let depth = 0;
  while (valid.filter((b) => b.depth === depth).length === 1 && valid.some((b) => b.depth === depth + 1)) depth++;
  const chosen = valid.filter((b) => b.depth === depth).slice(0, MAX_MODULES_PER_DOCUMENT);
  const starts = chosen.map((bookmark) => {
    // Start the module at its heading when the page shows it, so text above it stays with the previous module.
    const wanted = normalize(bookmark.title);
    const lineIndex = pages[bookmark.pageIndex]!.lines.findIndex((line) => {
      const text = normalize(line.text);
      return text.length > 0 && (text === wanted || (wanted.length >= 4 && text.endsWith(wanted)) || (text.length >= 4 && wanted.endsWith(text)));
    });
    return {
      title: bookmark.title,
      startPage: bookmark.pageIndex,
      headingLine: Math.max(0, lineIndex),
      startLine: lineIndex >= 0 ? lineIndex + 1 : 0,
    };
  });
  return closeSections(dedupeStarts(starts), pages);
}

function dedupeStarts<T extends { startPage: number; headingLine: number }>(starts: T[]): T[] {
  const seen = new Set<string>();
  return starts.filter((s) => {
    const key = `${s.startPage}:${s.headingLine}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** The font size most of the text is set in. */
function bodySize(pages: PageText[]): number {
  const chars = new Map<number, number>();
  for (const page of pages) for (const line of page.lines) chars.set(bucket(line.size), (chars.get(bucket(line.size)) ?? 0) + line.text.length);
  let best = 0;
  let bestChars = -1;
  for (const [size, count] of chars) if (count > bestChars) [best, bestChars] = [size, count];
  return best;
}

const bucket = (size: number) => Math.round(size * 2) / 2;

/** Running headers and footers: lines (digits ignored) that repeat on many pages. */
function repeatedLines(pages: PageText[]): Set<string> {
  if (pages.length < 4) return new Set();
  const seenOn = new Map<string, number>();
  for (const page of pages) {
    const unique = new Set(page.lines.map((line) => line.text.replace(/\d+/g, "#").trim()));
    for (const text of unique) seenOn.set(text, (seenOn.get(text) ?? 0) + 1);
  }
  const threshold = Math.max(3, pages.length * 0.3);
  return new Set([...seenOn].filter(([, count]) => count >= threshold).map(([text]) => text));
}

const isBoilerplate = (line: TextLine, boilerplate: Set<string>) => boilerplate.has(line.text.replace(/\d+/g, "#").trim());

function looksLikeHeading(line: TextLine, body: number): boolean {
  const text = line.text;
  // Lists of names or terms ("Ada Lovelace, Alan Turing, …") are set apart by weight but are not headings.
  if (text.length < 2 || text.length > 120 || !/\p{L}{2}/u.test(text) || text.split(",").length > 3) return false;
  if (line.size >= body * 1.15) return true;
  return line.bold && line.size >= body * 0.95 && text.length <= 80 && !/[.,;:]$/.test(text);
}

function sectionsFromHeadings(pages: PageText[], boilerplate: Set<string>): Section[] {
  const body = bodySize(pages);
  interface Candidate {
    key: string;
    size: number;
    bold: boolean;
    title: string;
    page: number;
    line: number;
    lastLine: number;
  }
  const candidates: Candidate[] = [];
  pages.forEach((page, pageIndex) => {
    page.lines.forEach((line, lineIndex) => {
      if (isBoilerplate(line, boilerplate) || !looksLikeHeading(line, body)) return;
      const key = `${bucket(line.size)}|${line.bold}`;
      const previous = candidates[candidates.length - 1];
      // A heading set over two lines is one heading.
      if (previous && previous.key === key && previous.page === pageIndex && previous.lastLine === lineIndex - 1 && previous.title.length + line.text.length <= 160) {
        previous.title = `${previous.title} ${line.text}`;
        previous.lastLine = lineIndex;
        return;
      }
      candidates.push({ key, size: bucket(line.size), bold: line.bold, title: line.text, page: pageIndex, line: lineIndex, lastLine: lineIndex });
    });
  });
  // The module level is the most prominent style that recurs: a document title appears once, chapter headings repeat.
  const levels = [...new Set(candidates.map((c) => c.key))]
    .map((key) => ({ key, size: Number(key.split("|")[0]), bold: key.endsWith("true"), count: candidates.filter((c) => c.key === key).length }))
    .sort((a, b) => b.size - a.size || Number(b.bold) - Number(a.bold));
  const level = levels.find((l) => l.count >= 2 && l.count <= Math.max(MAX_MODULES_PER_DOCUMENT, pages.length));
  if (!level) return [];
  const starts = candidates
    .filter((c) => c.key === level.key)
    .slice(0, MAX_MODULES_PER_DOCUMENT)
    .map((c) => ({ title: c.title, startPage: c.page, headingLine: c.line, startLine: c.lastLine + 1 }));
  return closeSections(starts, pages);
}

function sectionsFromPageRanges(pages: PageText[]): Section[] {
  const count = Math.min(12, Math.max(1, Math.round(pages.length / 5)));
  const perModule = Math.ceil(pages.length / count);
  const body = bodySize(pages);
  const sections: Section[] = [];
  for (let start = 0; start < pages.length; start += perModule) {
    const end = Math.min(pages.length - 1, start + perModule - 1);
    sections.push({ title: rangeTitle(pages, start, end, body), startPage: start, headingLine: 0, startLine: 0, endPage: end, endLine: pages[end]!.lines.length });
  }
  return sections;
}

/** The most prominent short line of the range, or "Pages a–b" when nothing stands out. */
function rangeTitle(pages: PageText[], start: number, end: number, body: number): string {
  let best: TextLine | undefined;
  for (let p = start; p <= end; p++) {
    for (const line of pages[p]!.lines) {
      if (line.size > body * 1.1 && line.text.length <= 80 && /\p{L}{2}/u.test(line.text) && (!best || line.size > best.size)) best = line;
    }
  }
  return best?.text ?? (start === end ? `Page ${start + 1}` : `Pages ${start + 1}–${end + 1}`);
}

function sectionText(pages: PageText[], section: Section, boilerplate: Set<string>): string {
  const lines: string[] = [];
  for (let p = section.startPage; p <= section.endPage; p++) {
    const page = pages[p]!.lines;
    const from = p === section.startPage ? section.startLine : 0;
    const to = p === section.endPage ? section.endLine : page.length;
    for (let i = from; i < to; i++) if (!isBoilerplate(page[i]!, boilerplate)) lines.push(page[i]!.text);
  }
  // Words broken at a line end ("manip-" + "ulation") are joined again.
  const parts: string[] = [];
  let previous = "";
  for (const line of lines) {
    const hyphenated = previous.length > 1 && previous.endsWith("-") && isLowercase(previous[previous.length - 2]!) && isLowercase(line[0] ?? "");
    if (hyphenated) parts[parts.length - 1] = previous.slice(0, -1) + line;
    else parts.push(line);
    previous = hyphenated ? parts[parts.length - 1]! : line;
  }
  return parts.join(" ");
}

const isLowercase = (char: string) => char !== char.toUpperCase() && char === char.toLowerCase();

const STOPWORDS = new Set(
  (
    "a about above after again against all also am an and any are as at be because been before being below between both but by can could " +
    "did do does doing down during each either else etc even ever every few for from further get gets given had has have having he her here " +
    "hers herself him himself his how however i if in into is it its itself just least less let like made make many may me might more most " +
    "much must my myself need needs no nor not now of off often on once one only or other others our ours ourselves out over own per rather " +
    "same see she should since so some such than that the their theirs them themselves then there these they this those though through " +
    "thus to too two under until up upon us use used uses using very via was we well were what when where whether which while who whom " +
    "whose why will with within without would yet you your yours yourself yourselves first second new way ways example e.g i.e"
  ).split(" "),
);

interface Analysis {
  sentences: { text: string; terms: string[] }[];
  counts: Map<string, number>;
  /** How a term was first written when not all in lower case ("ASN", "Postgres", "Hash table"). */
  capitalised: Map<string, string>;
  /** Terms also seen written all in lower case. */
  lowercaseSeen: Set<string>;
}

const DOT_LEADERS = /(?:\s*\.){4,}\s*/g;
const ADDRESSES = /\b(?:https?:\/\/|www\.)\S+|\S+@\S+\.\S+/g;
const SENTENCE_END = /(?<=[.!?])\s+(?=[\p{Lu}\p{N}“"(])/u;
/** A word (group 1), or punctuation that ends a phrase: a term pair never spans it. */
const TOKEN = /([\p{L}][\p{L}\p{N}+#'’-]*[\p{L}\p{N}+#]|[\p{L}])|[,;:()[\]{}"“”—–]|\.\s|\s-\s/gu;

function analyse(text: string): Analysis {
  const counts = new Map<string, number>();
  const capitalised = new Map<string, string>();
  const lowercaseSeen = new Set<string>();
  const note = (term: string, form: string) => {
    counts.set(term, (counts.get(term) ?? 0) + 1);
    if (form === term) lowercaseSeen.add(term);
    else if (!capitalised.has(term)) capitalised.set(term, form);
  };
  const sentences = text
    .replace(DOT_LEADERS, " … ")
    .split(SENTENCE_END)
    .map((sentence) => {
      const terms: string[] = [];
      let previousTerm = "";
      let previousForm = "";
      // Addresses are not subject matter.
      for (const match of sentence.replace(ADDRESSES, " ").matchAll(TOKEN)) {
        const form = match[1];
        const term = form?.toLowerCase();
        if (!form || !term || term.length < 3 || STOPWORDS.has(term)) {
          previousTerm = "";
          continue;
        }
        note(term, form);
        terms.push(term);
        if (previousTerm) {
          const pair = `${previousTerm} ${term}`;
          note(pair, `${previousForm} ${form}`);
          terms.push(pair);
        }
        previousTerm = term;
        previousForm = form;
      }
      return { text: sentence.trim(), terms };
    });
  return { sentences, counts, capitalised, lowercaseSeen };
}

function isProse(sentence: string): boolean {
  const words = sentence.split(/\s+/).length;
  const letters = (sentence.match(/\p{L}/gu) ?? []).length;
  return sentence.length >= 40 && sentence.length <= 320 && words >= 6 && letters / sentence.length > 0.6;
}

function summarize(analysis: Analysis, weight: (term: string) => number): string {
  const scored: { text: string; index: number; score: number }[] = [];
  analysis.sentences.forEach((sentence, index) => {
    if (!isProse(sentence.text)) return;
    let score = 0;
    for (const term of new Set(sentence.terms)) score += (analysis.counts.get(term) ?? 0) * weight(term) * (term.includes(" ") ? 1.5 : 1);
    // Opening sentences usually say what a section is about.
    scored.push({ text: sentence.text, index, score: score / Math.sqrt(sentence.terms.length + 1) + (index < 2 ? 0.5 : 0) });
  });
  if (scored.length === 0) {
    const text = analysis.sentences.map((s) => s.text).join(" ").trim();
    return text.length <= SUMMARY_MAX_CHARS ? text : `${text.slice(0, SUMMARY_MAX_CHARS).replace(/\s+\S*$/, "")}…`;
  }
  const chosen: typeof scored = [];
  let length = 0;
  for (const sentence of scored.sort((a, b) => b.score - a.score)) {
    if (chosen.length >= 3) break;
    if (chosen.length > 0 && length + sentence.text.length > SUMMARY_MAX_CHARS) continue;
    chosen.push(sentence);
    length += sentence.text.length + 1;
  }
  return chosen
    .sort((a, b) => a.index - b.index)
    .map((s) => s.text)
    .join(" ");
}

function keyTerms(analysis: Analysis, weight: (term: string) => number): string[] {
  const ranked: { term: string; score: number }[] = [];
  for (const [term, count] of analysis.counts) {
    const pair = term.includes(" ");
    // A pair that occurs once is chance, not a term.
    if (!pair || count >= 2) ranked.push({ term, score: count * weight(term) * (pair ? 1.6 : 1) });
  }
  ranked.sort((a, b) => b.score - a.score || (a.term < b.term ? -1 : 1));
  const chosen: string[] = [];
  for (const { term } of ranked) {
    if (chosen.length >= KEY_TERMS) break;
    if (/^[\p{N}\W]+$/u.test(term)) continue;
    // "hash table" makes "hash" and "table" redundant, and the other way round.
    if (chosen.some((c) => c.split(" ").includes(term) || term.split(" ").includes(c))) continue;
    chosen.push(term);
  }
  // Acronyms and names stay as written; words capitalised only at a sentence start are lower-cased.
  return chosen.map((term) => (analysis.lowercaseSeen.has(term) ? term : (analysis.capitalised.get(term) ?? term)));
}
