import { describe, expect, test } from "bun:test";
import { parseJsonPath, readJsonPath, readSeatsFromHtml, seatsFromReading, validateExtractor, type ExtractorSpec } from "../src/extract.ts";

const SCHEDULE = `<!doctype html><html><body>
<div class="course_box">
  <div class="course_title">CMPUT 201 - Practical Programming Methodology</div>
  <table>
    <tr><td><strong class="type_block">LEC A1</strong> (40121)</td><td>MWF</td><td><span class="seatText">3 of 30 seats open</span></td></tr>
    <tr><td><strong class="type_block">LEC A2</strong> (40122)</td><td>TR</td><td><span class="seatText">Full, Waitlist: 2</span></td></tr>
    <tr><td><strong class="type_block">LAB D01</strong></td><td>M</td><td></td></tr>
    <tr><td><strong class="type_block">LAB D02</strong></td><td>W</td><td><span class="seatText">Loading…</span></td></tr>
  </table>
</div>
<div class="course_box">
  <div class="course_title">CMPUT 2010 - Not the same course</div>
  <div><strong class="type_block">LEC A1</strong><div class="seatText">99 of 99 seats open</div></div>
</div>
<div class="course_box">
  <div class="course_title">MATH125 - Linear Algebra I</div>
  <div><strong class="type_block">LEC A1</strong><div class="seatText">Seats: 31/150</div></div>
</div>
<div id="custom"><span class="avail">Places libres 4 sur 25</span></div>
</body></html>`;

const bt = (courseCode: string, sectionLabel: string): ExtractorSpec => ({ kind: "beartracks", courseCode, sectionLabel });

describe("the beartracks extractor", () => {
  test("finds a section's seat text under its course", () => {
    expect(readSeatsFromHtml(SCHEDULE, bt("CMPUT 201", "LEC A1"))).toEqual({ found: true, text: "3 of 30 seats open" });
    expect(readSeatsFromHtml(SCHEDULE, bt("cmput 201", "lec a2"))).toEqual({ found: true, text: "Full, Waitlist: 2" });
  });

  test("course codes match as a person writes them, not as a substring", () => {
    expect(readSeatsFromHtml(SCHEDULE, bt("MATH 125", "LEC A1"))).toEqual({ found: true, text: "Seats: 31/150" });
    expect(readSeatsFromHtml(SCHEDULE, bt("CMPUT201", "A1"))).toEqual({ found: true, text: "3 of 30 seats open" });
  });

  test("says what is missing, in words a person can act on", () => {
    expect(readSeatsFromHtml(SCHEDULE, bt("CMPUT 201", "LEC Z9"))).toEqual({ found: false, reason: "no section 'LEC Z9' under course 'CMPUT 201'" });
    expect(readSeatsFromHtml(SCHEDULE, bt("STAT 151", "LEC A1"))).toEqual({ found: false, reason: "no course 'STAT 151' on the page" });
    expect(readSeatsFromHtml(SCHEDULE, bt("CMPUT 201", "LAB D01"))).toEqual({ found: false, reason: "section 'LAB D01' under course 'CMPUT 201' shows no seat text (.seatText)" });
    expect(readSeatsFromHtml("<html><body><p>maintenance</p></body></html>", bt("CMPUT 201", "LEC A1"))).toEqual({ found: false, reason: "the page shows no courses (no .course_box elements)" });
  });

  test("a placeholder is not a reading yet", () => {
    expect(readSeatsFromHtml(SCHEDULE, bt("CMPUT 201", "LAB D02")).found).toBe(false);
  });

  test("an ambiguous label is refused rather than guessed", () => {
    const page = SCHEDULE.replace("LAB D01", "LAB A1");
    expect(readSeatsFromHtml(page, bt("CMPUT 201", "A1"))).toEqual({
      found: false,
      reason: "section 'A1' under course 'CMPUT 201' is ambiguous: LEC A1, LAB A1; give the full label",
    });
    expect(readSeatsFromHtml(page, bt("CMPUT 201", "LEC A1"))).toEqual({ found: true, text: "3 of 30 seats open" });
  });
});

describe("the css extractor", () => {
  test("reads the seats element inside the container, with the built-in parser or a pattern", () => {
    const spec: ExtractorSpec = { kind: "css", containerSelector: "#custom", seatsSelector: ".avail", pattern: "" };
    const reading = readSeatsFromHtml(SCHEDULE, spec);
    expect(reading).toEqual({ found: true, text: "Places libres 4 sur 25" });
    const patterned: ExtractorSpec = { ...spec, pattern: "libres (?<open>\\d+) sur (?<capacity>\\d+)" };
    expect(seatsFromReading(reading as { found: true; text: string }, patterned)).toMatchObject({ open: 4, capacity: 25 });
  });
  test("names the selector that found nothing", () => {
    expect(readSeatsFromHtml(SCHEDULE, { kind: "css", containerSelector: "#nope", seatsSelector: "", pattern: "" })).toEqual({ found: false, reason: "nothing on the page matches '#nope'" });
    expect(readSeatsFromHtml(SCHEDULE, { kind: "css", containerSelector: "#custom", seatsSelector: ".x", pattern: "" })).toEqual({ found: false, reason: "nothing inside '#custom' matches '.x'" });
  });
});

describe("the json extractor", () => {
  test("paths with dots and indexes", () => {
    expect(parseJsonPath("data.sections[0].seats")).toEqual(["data", "sections", 0, "seats"]);
    expect(parseJsonPath('courses[2]["open seats"]')).toEqual(["courses", 2, "open seats"]);
    for (const bad of ["", ".a", "a..b", "a[", "a[x]", "a.", "1a"]) expect(parseJsonPath(bad)).toBeNull();
  });
  test("reads a value from a JSON response or a JSON document in a page", () => {
    const spec: ExtractorSpec = { kind: "json", path: "data.sections[1].seats", tokens: ["data", "sections", 1, "seats"] };
    const data = { data: { sections: [{ seats: 1 }, { seats: { open: 2, capacity: 40 } }] } };
    expect(readJsonPath(data, spec)).toEqual({ found: true, value: { open: 2, capacity: 40 } });
    expect(readSeatsFromHtml(`<html><body><script type="application/json">${JSON.stringify(data)}</script></body></html>`, spec)).toEqual({ found: true, value: { open: 2, capacity: 40 } });
    expect(readJsonPath({ data: {} }, spec)).toEqual({ found: false, reason: "the JSON has nothing at 'data.sections[1].seats'" });
  });
});

describe("extractor validation", () => {
  test("good extractors become specs", () => {
    expect(validateExtractor({ $case: "beartracks", value: { courseCode: " CMPUT 201 ", sectionLabel: "LEC A1" } })).toEqual({ spec: bt("CMPUT 201", "LEC A1") });
    expect(validateExtractor({ $case: "json", value: { path: "a[0].b" } })).toEqual({ spec: { kind: "json", path: "a[0].b", tokens: ["a", 0, "b"] } });
  });
  test("bad ones name the field and the problem", () => {
    const fields = (input: Parameters<typeof validateExtractor>[0]) => {
      const result = validateExtractor(input);
      return "violations" in result ? result.violations.map((v) => v.field) : [];
    };
    expect(fields({ $case: "beartracks", value: { courseCode: "", sectionLabel: " " } })).toEqual(["extractor.beartracks.course_code", "extractor.beartracks.section_label"]);
    expect(fields({ $case: "css", value: { containerSelector: "div[[", seatsSelector: "", pattern: "" } })).toEqual(["extractor.css.container_selector"]);
    expect(fields({ $case: "css", value: { containerSelector: "div", seatsSelector: "", pattern: "(" } })).toEqual(["extractor.css.pattern"]);
    expect(fields({ $case: "css", value: { containerSelector: "div", seatsSelector: "", pattern: "\\d+ left" } })).toEqual(["extractor.css.pattern"]);
    expect(fields({ $case: "css", value: { containerSelector: "div", seatsSelector: "", pattern: "(?<open>(a+)+)" } })).toEqual(["extractor.css.pattern"]);
    expect(fields({ $case: "json", value: { path: "a..b" } })).toEqual(["extractor.json.path"]);
  });
});
