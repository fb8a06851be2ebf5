/**
 * Extractors: how a check finds the seat text on a page. `readSeatsFromDocument` runs in two places
 * — inside Chromium (serialised into the page, so it may not reference anything outside itself)
 * and on a linkedom document in HTTP mode — so both modes read a page exactly the same way.
 */
import { parseHTML } from "linkedom";
import safeRegex from "safe-regex2";
import type { FieldViolation } from "@coursemesh/shared/grpc/errors";
import { parseSeatText, parseWithPattern, PATTERN_GROUPS, seatsFromJsonValue, type SeatReading } from "./seats.ts";

/** A validated extractor, as stored with the monitor. */
export type ExtractorSpec =
  | { kind: "beartracks"; courseCode: string; sectionLabel: string }
  | { kind: "css"; containerSelector: string; seatsSelector: string; pattern: string }
  | { kind: "json"; path: string; tokens: (string | number)[] };

/** The slice of the DOM the reader uses; Chromium's document and linkedom's both provide it. */
export interface ReadableElement {
  readonly textContent: string | null;
  readonly tagName: string;
  readonly classList: { contains(name: string): boolean };
  querySelector(selector: string): ReadableElement | null;
  querySelectorAll(selector: string): ArrayLike<ReadableElement>;
}
export interface ReadableDocument {
  readonly body: ReadableElement | null;
  querySelector(selector: string): ReadableElement | null;
  querySelectorAll(selector: string): ArrayLike<ReadableElement>;
}

/** What reading a document found: the seat text (or JSON value), or why there is none yet. */
export type PageReading = { found: true; text?: string; value?: unknown } | { found: false; reason: string };

/**
 * Reads the seat text an extractor points at. Self-contained on purpose: Chromium runs its source.
 * Text that is still a placeholder ("Loading…", "…", "-") does not count as found, so a check waits
 * for the page's JavaScript to fill it in.
 */
export function readSeatsFromDocument(doc: ReadableDocument, spec: ExtractorSpec): PageReading {
  const squash = (text: string | null | undefined) => (text ?? "").replace(/\s+/g, " ").trim();
  // "CMPUT201" and "cmput 201" are the same code: tokens split at letter/digit boundaries.
  const tokens = (text: string) =>
    squash(text)
      .toLowerCase()
      .replace(/([a-z])(\d)/g, "$1 $2")
      .replace(/(\d)([a-z])/g, "$1 $2")
      .split(/[^a-z0-9]+/)
      .filter(Boolean);
  const startsWith = (whole: string[], part: string[]) => part.length > 0 && part.every((t, i) => whole[i] === t);
  const contains = (whole: string[], part: string[]) => whole.some((_, i) => startsWith(whole.slice(i), part));
  const placeholder = (text: string) => /^(?:|loading\W*|please wait\W*|…|\.{2,}|-+|—|–)$/i.test(text);

  if (spec.kind === "beartracks") {
    const boxes = Array.from(doc.querySelectorAll(".course_box"));
    if (boxes.length === 0) return { found: false, reason: "the page shows no courses (no .course_box elements)" };
    const code = tokens(spec.courseCode);
    const box = boxes.find((b) => startsWith(tokens(b.querySelector(".course_title")?.textContent ?? ""), code));
    if (!box) return { found: false, reason: `no course '${spec.courseCode}' on the page` };
    const label = tokens(spec.sectionLabel);
    const matches: { label: string; text: string | undefined }[] = [];
    let current: { label: string; text: string | undefined } | undefined;
    // Sections and their seat text in document order: a section's seats are the first .seatText
    // after its strong.type_block and before the next one, whatever the markup in between.
    for (const el of Array.from(box.querySelectorAll("strong.type_block, .seatText"))) {
      if (el.tagName.toLowerCase() === "strong" && el.classList.contains("type_block")) {
        const text = squash(el.textContent);
        current = contains(tokens(text), label) ? { label: text, text: undefined } : undefined;
        if (current) matches.push(current);
      } else if (current && current.text === undefined) {
        current.text = squash(el.textContent);
      }
    }
    if (matches.length === 0) return { found: false, reason: `no section '${spec.sectionLabel}' under course '${spec.courseCode}'` };
    const distinct = Array.from(new Set(matches.map((m) => m.label)));
    if (distinct.length > 1) {
      return { found: false, reason: `section '${spec.sectionLabel}' under course '${spec.courseCode}' is ambiguous: ${distinct.join(", ")}; give the full label` };
    }
    const text = matches[0]!.text;
    if (text === undefined || placeholder(text)) {
      return { found: false, reason: `section '${spec.sectionLabel}' under course '${spec.courseCode}' shows no seat text (.seatText)` };
    }
    return { found: true, text };
  }

  if (spec.kind === "css") {
    const container = doc.querySelector(spec.containerSelector);
    if (!container) return { found: false, reason: `nothing on the page matches '${spec.containerSelector}'` };
    const target = spec.seatsSelector ? container.querySelector(spec.seatsSelector) : container;
    if (!target) return { found: false, reason: `nothing inside '${spec.containerSelector}' matches '${spec.seatsSelector}'` };
    const text = squash(target.textContent);
    if (placeholder(text)) return { found: false, reason: `'${spec.seatsSelector || spec.containerSelector}' shows no seat text` };
    return { found: true, text };
  }

  const sources = [doc.querySelector("pre")?.textContent, doc.body?.textContent];
  for (const script of Array.from(doc.querySelectorAll('script[type="application/json"], script[type="application/ld+json"]'))) {
    sources.push(script.textContent);
  }
  let parsedAny = false;
  for (const source of sources) {
    if (!source || !source.trim()) continue;
    let value: unknown;
    try {
      value = JSON.parse(source);
    } catch {
      continue;
    }
    parsedAny = true;
    for (const token of spec.tokens) value = value === null || value === undefined ? undefined : (value as Record<string | number, unknown>)[token];
    if (value !== undefined && value !== null) return { found: true, value };
  }
  return { found: false, reason: parsedAny ? `the JSON has nothing at '${spec.path}'` : "the page holds no JSON document" };
}

/** Parses a dot path with [n] indexes (`data.sections[0].seats`, `["odd key"]`); null when malformed. */
export function parseJsonPath(path: string): (string | number)[] | null {
  const tokens: (string | number)[] = [];
  const part = /\s*(?:([A-Za-z_$][\w$-]*)|\[(\d{1,6})\]|\["((?:[^"\\]|\\.)*)"\])\s*/y;
  let index = 0;
  let expectName = true;
  while (index < path.length) {
    if (!expectName && path[index] === ".") {
      index++;
      expectName = true;
      continue;
    }
    part.lastIndex = index;
    const match = part.exec(path);
    if (!match) return null;
    if (match[1] !== undefined) {
      if (!expectName) return null;
      tokens.push(match[1]);
    } else if (match[2] !== undefined) {
      tokens.push(Number(match[2]));
    } else {
      tokens.push(JSON.parse(`"${match[3]}"`) as string);
    }
    expectName = false;
    index = part.lastIndex;
  }
  return tokens.length > 0 && !expectName ? tokens : null;
}

/** Walks parsed JSON along a path's tokens (HTTP mode reads JSON responses without a DOM). */
export function readJsonPath(data: unknown, spec: Extract<ExtractorSpec, { kind: "json" }>): PageReading {
  let value = data;
  for (const token of spec.tokens) value = value === null || value === undefined ? undefined : (value as Record<string | number, unknown>)[token];
  return value === undefined || value === null ? { found: false, reason: `the JSON has nothing at '${spec.path}'` } : { found: true, value };
}

const MAX_PATTERN_LENGTH = 300;
const MAX_SELECTOR_LENGTH = 500;
const { document: probeDocument } = parseHTML("<!doctype html><html><body></body></html>");

function selectorProblem(selector: string): string | undefined {
  if (selector.length > MAX_SELECTOR_LENGTH) return `must be at most ${MAX_SELECTOR_LENGTH} characters`;
  try {
    probeDocument.querySelector(selector);
    return undefined;
  } catch (error) {
    return `is not a valid CSS selector (${(error as Error).message})`;
  }
}

/** The compiled pattern of a css extractor (or undefined for the built-in parser). */
export function compilePattern(pattern: string): RegExp | undefined {
  return pattern ? new RegExp(pattern, "i") : undefined;
}

function patternProblem(pattern: string): string | undefined {
  if (pattern.length > MAX_PATTERN_LENGTH) return `must be at most ${MAX_PATTERN_LENGTH} characters`;
  let compiled: RegExp;
  try {
    compiled = new RegExp(pattern, "i");
  } catch (error) {
    return `is not a valid regular expression (${(error as Error).message})`;
  }
  if (!PATTERN_GROUPS.some((group) => compiled.source.includes(`(?<${group}>`))) {
    return `needs a named group (?<open>…), (?<capacity>…) or (?<waitlist>…)`;
  }
  // Seat text is short, but a backtracking pattern can still stall the process on a hostile page.
  if (!safeRegex(compiled)) return "may take exponential time (nested quantifiers); simplify it";
  return undefined;
}

/** The extractor as the proto carries it (`Extractor.kind`). */
export type ExtractorInput =
  | { $case: "beartracks"; value: { courseCode: string; sectionLabel: string } }
  | { $case: "css"; value: { containerSelector: string; seatsSelector: string; pattern: string } }
  | { $case: "json"; value: { path: string } };

/** Checks an extractor from a request; returns the spec to store, or the field violations. */
export function validateExtractor(input: ExtractorInput): { spec: ExtractorSpec } | { violations: FieldViolation[] } {
  const violations: FieldViolation[] = [];
  const need = (field: string, value: string, max = 200) => {
    if (!value.trim()) violations.push({ field, description: "must not be empty" });
    else if (value.length > max) violations.push({ field, description: `must be at most ${max} characters` });
  };
  switch (input.$case) {
    case "beartracks": {
      need("extractor.beartracks.course_code", input.value.courseCode);
      need("extractor.beartracks.section_label", input.value.sectionLabel);
      const spec: ExtractorSpec = { kind: "beartracks", courseCode: input.value.courseCode.trim(), sectionLabel: input.value.sectionLabel.trim() };
      return violations.length ? { violations } : { spec };
    }
    case "css": {
      const { containerSelector, seatsSelector, pattern } = input.value;
      if (!containerSelector.trim()) violations.push({ field: "extractor.css.container_selector", description: "must not be empty" });
      else {
        const problem = selectorProblem(containerSelector);
        if (problem) violations.push({ field: "extractor.css.container_selector", description: problem });
      }
      if (seatsSelector.trim()) {
        const problem = selectorProblem(seatsSelector);
        if (problem) violations.push({ field: "extractor.css.seats_selector", description: problem });
      }
      if (pattern) {
        const problem = patternProblem(pattern);
        if (problem) violations.push({ field: "extractor.css.pattern", description: problem });
      }
      const spec: ExtractorSpec = { kind: "css", containerSelector: containerSelector.trim(), seatsSelector: seatsSelector.trim(), pattern };
      return violations.length ? { violations } : { spec };
    }
    case "json": {
      const tokens = input.value.path.length <= 500 ? parseJsonPath(input.value.path) : null;
      if (!tokens) {
        return { violations: [{ field: "extractor.json.path", description: 'must be a dot path with [n] indexes, e.g. "data.sections[0].seats"' }] };
      }
      return { spec: { kind: "json", path: input.value.path, tokens } };
    }
  }
}

/** The proto form of a stored extractor. */
export function extractorInput(spec: ExtractorSpec): ExtractorInput {
  switch (spec.kind) {
    case "beartracks":
      return { $case: "beartracks", value: { courseCode: spec.courseCode, sectionLabel: spec.sectionLabel } };
    case "css":
      return { $case: "css", value: { containerSelector: spec.containerSelector, seatsSelector: spec.seatsSelector, pattern: spec.pattern } };
    case "json":
      return { $case: "json", value: { path: spec.path } };
  }
}

/** Turns what the page showed into seats: the css pattern or the built-in parser for text, the JSON rules for values. */
export function seatsFromReading(reading: Extract<PageReading, { found: true }>, spec: ExtractorSpec): SeatReading {
  if (reading.text === undefined) return seatsFromJsonValue(reading.value);
  const pattern = spec.kind === "css" ? compilePattern(spec.pattern) : undefined;
  return pattern ? parseWithPattern(reading.text, pattern) : parseSeatText(reading.text);
}

/** Reads seats from an HTML document in HTTP mode (no JavaScript runs). */
export function readSeatsFromHtml(html: string, spec: ExtractorSpec): PageReading {
  const { document } = parseHTML(html);
  return readSeatsFromDocument(document as unknown as ReadableDocument, spec);
}
