/**
 * Seat text as registrars print it ("Seats: 12/30", "3 of 30 seats open", "Full", "Waitlist: 4",
 * PeopleSoft's "Class Capacity 30 Enrollment Total 28 Available Seats 2" …) read into numbers. The
 * raw text is always kept; text with no number we understand keeps only the raw value and a note.
 */

/** What a check read: counts when the text showed them, the text as found, and a note when it could not be read. */
export interface SeatReading {
  open?: number;
  capacity?: number;
  waitlist?: number;
  raw: string;
  /** Set when the text could not be read as seat counts. */
  note?: string;
}

/** Longest seat text kept; anything longer is page noise, not a seat count. */
export const MAX_SEAT_TEXT = 500;

type Field = "open" | "capacity" | "waitlist" | "enrolled" | "ignored";
interface Rule {
  pattern: RegExp;
  /** Which capture group fills which field, in order. */
  fields: Field[];
}

const N = String.raw`(\d{1,6})`;
const WAITLIST = String.raw`wait\s*-?\s*list(?:ed)?`;
const OPEN_WORD = String.raw`(?:open|available|avail\.?|remaining|left|free|vacant)`;
const OF = String.raw`\s*(?:\/|of|out\s+of)\s*`;

// Order matters: specific phrasings first; each match is masked so later, looser rules cannot
// read the same digits again (e.g. "Wait List Capacity 10" is not the class capacity).
const RULES: Rule[] = [
  { pattern: new RegExp(String.raw`${WAITLIST}\s+capacity\s*:?\s*${N}`, "i"), fields: ["ignored"] },
  { pattern: new RegExp(String.raw`${WAITLIST}(?:\s+(?:total|count|size))?\s*:?\s*${N}(?:${OF}\d+)?`, "i"), fields: ["waitlist"] },
  { pattern: new RegExp(String.raw`${N}\s+(?:people\s+|students\s+)?(?:on\s+(?:the\s+)?${WAITLIST}|${WAITLIST})`, "i"), fields: ["waitlist"] },
  { pattern: new RegExp(String.raw`enrol(?:l?ed|l?ment)(?:\s+total)?\s*:?\s*${N}${OF}${N}`, "i"), fields: ["enrolled", "capacity"] },
  { pattern: new RegExp(String.raw`${N}${OF}${N}\s+(?:seats?\s+)?(?:enrol(?:l?ed)|taken|filled)`, "i"), fields: ["enrolled", "capacity"] },
  { pattern: new RegExp(String.raw`enrol(?:l?ed|l?ment)(?:\s+total)?\s*:?\s*${N}`, "i"), fields: ["enrolled"] },
  { pattern: new RegExp(String.raw`${N}${OF}${N}\s+(?:seats?\s+)?${OPEN_WORD}`, "i"), fields: ["open", "capacity"] },
  {
    pattern: new RegExp(String.raw`(?:(?:open|available|remaining|free)\s+)?(?:seats?|${OPEN_WORD})(?:\s+${OPEN_WORD})?\s*:?\s*${N}${OF}${N}`, "i"),
    fields: ["open", "capacity"],
  },
  { pattern: new RegExp(String.raw`${N}\s+(?:open\s+)?seats?\s+${OPEN_WORD}`, "i"), fields: ["open"] },
  { pattern: new RegExp(String.raw`${N}\s+${OPEN_WORD}\s+seats?`, "i"), fields: ["open"] },
  { pattern: new RegExp(String.raw`${OPEN_WORD}\s+seats?\s*:?\s*${N}`, "i"), fields: ["open"] },
  { pattern: new RegExp(String.raw`seats?\s+${OPEN_WORD}\s*:?\s*${N}`, "i"), fields: ["open"] },
  { pattern: new RegExp(String.raw`\bopen\b\D{0,12}?${N}\s*seats?`, "i"), fields: ["open"] },
  { pattern: new RegExp(String.raw`(?:class\s+|total\s+|max(?:imum)?\s+)?capacity\s*:?\s*${N}`, "i"), fields: ["capacity"] },
  { pattern: new RegExp(String.raw`(?:total|max(?:imum)?)(?:\s+seats?)?\s*:\s*${N}`, "i"), fields: ["capacity"] },
  { pattern: new RegExp(String.raw`(?:^|\b)(?:available|open)\s*:\s*${N}`, "i"), fields: ["open"] },
  { pattern: new RegExp(String.raw`\bseats?\s*:\s*${N}`, "i"), fields: ["open"] },
  { pattern: new RegExp(String.raw`^\s*${N}\s*\/\s*${N}\s*$`), fields: ["open", "capacity"] },
  { pattern: new RegExp(String.raw`^\s*${N}\s*$`), fields: ["open"] },
];

/** Words that mean "no seat can be had" when no count says otherwise. */
const NO_SEATS = /\b(?:full|closed|cancell?ed|sold\s+out|no\s+(?:open\s+)?seats?(?:\s+(?:available|left|remaining))?)\b/i;

/** Collapses whitespace and trims, as a person reads the text. */
export function normalizeSeatText(text: string): string {
  return text.replace(/\s+/g, " ").trim().slice(0, MAX_SEAT_TEXT);
}

/** Reads seat counts out of registrar text; unknown text keeps its raw value with a note saying so. */
export function parseSeatText(text: string): SeatReading {
  const raw = normalizeSeatText(text);
  let rest = raw;
  const found: Partial<Record<Field, number>> = {};
  for (const rule of RULES) {
    const match = rule.pattern.exec(rest);
    if (!match) continue;
    rule.fields.forEach((field, i) => {
      const value = Number(match[i + 1]);
      if (found[field] === undefined) found[field] = value;
    });
    // Mask the matched span with a character no rule matches (a space would let `\s+` bridge two spans).
    rest = rest.slice(0, match.index) + "¦".repeat(match[0].length) + rest.slice(match.index + match[0].length);
  }
  if (found.open === undefined && found.enrolled !== undefined && found.capacity !== undefined) {
    found.open = Math.max(0, found.capacity - found.enrolled);
  }
  if (found.open === undefined && NO_SEATS.test(rest)) found.open = 0;
  const reading: SeatReading = { raw };
  if (found.open !== undefined) reading.open = found.open;
  if (found.capacity !== undefined) reading.capacity = found.capacity;
  if (found.waitlist !== undefined) reading.waitlist = found.waitlist;
  if (reading.open === undefined && reading.capacity === undefined && reading.waitlist === undefined) {
    reading.note = raw === "" ? "the seat text is empty" : `could not parse seat text "${raw}"; showing it as found`;
  }
  return reading;
}

/** Named groups a custom pattern may use. */
export const PATTERN_GROUPS = ["open", "capacity", "waitlist"] as const;

/** Reads seats with a monitor's own regular expression (named groups open, capacity, waitlist). */
export function parseWithPattern(text: string, pattern: RegExp): SeatReading {
  const raw = normalizeSeatText(text);
  const groups = pattern.exec(raw)?.groups;
  const reading: SeatReading = { raw };
  for (const name of PATTERN_GROUPS) {
    const value = groups?.[name];
    if (value !== undefined && /^\d{1,9}$/.test(value.trim())) reading[name] = Number(value.trim());
  }
  if (reading.open === undefined && reading.capacity === undefined && reading.waitlist === undefined) {
    reading.note = `the pattern found no seat counts in "${raw}"; showing the text as found`;
  }
  return reading;
}

/**
 * What "the seats changed" compares: the counts when there are any (so a reworded page with the
 * same numbers is not a change), otherwise the text itself.
 */
export function seatKey(seats: SeatReading | null | undefined): string | null {
  if (!seats) return null;
  if (seats.open === undefined && seats.capacity === undefined && seats.waitlist === undefined) return `text:${seats.raw}`;
  return `counts:${seats.open ?? "-"}/${seats.capacity ?? "-"}/${seats.waitlist ?? "-"}`;
}

/** Whether two readings differ as a person watching the section would see it. */
export function seatsChanged(previous: SeatReading | null | undefined, current: SeatReading): boolean {
  return seatKey(previous) !== seatKey(current);
}

/** Seats from a JSON value: a number (open seats), an object with counts, or seat text. */
export function seatsFromJsonValue(value: unknown): SeatReading {
  if (typeof value === "number" && Number.isInteger(value) && value >= 0) return { open: value, raw: String(value) };
  if (typeof value === "string") return parseSeatText(value);
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const record = value as Record<string, unknown>;
    const pick = (...names: string[]) => {
      for (const name of names) {
        const v = record[name];
        if (typeof v === "number" && Number.isInteger(v) && v >= 0) return v;
        if (typeof v === "string" && /^\d{1,9}$/.test(v.trim())) return Number(v.trim());
      }
      return undefined;
    };
    const reading: SeatReading = { raw: normalizeSeatText(JSON.stringify(value)) };
    const open = pick("open", "open_seats", "openSeats", "available", "seats_available", "seatsAvailable", "remaining");
    const capacity = pick("capacity", "total", "max", "seats_total", "seatsTotal", "cap");
    const waitlist = pick("waitlist", "waitlisted", "wait_list", "waitList", "waitlist_total", "waitlistTotal");
    const enrolled = pick("enrolled", "enrollment", "taken");
    if (open !== undefined) reading.open = open;
    else if (capacity !== undefined && enrolled !== undefined) reading.open = Math.max(0, capacity - enrolled);
    if (capacity !== undefined) reading.capacity = capacity;
    if (waitlist !== undefined) reading.waitlist = waitlist;
    if (reading.open === undefined && reading.capacity === undefined && reading.waitlist === undefined) {
      const text = typeof record.text === "string" ? record.text : typeof record.seats === "string" ? record.seats : undefined;
      if (text !== undefined) return parseSeatText(text);
      reading.note = `the JSON object has no seat counts (open, capacity, waitlist): ${reading.raw}`;
    }
    return reading;
  }
  const raw = normalizeSeatText(JSON.stringify(value) ?? "");
  return { raw, note: `the JSON value ${raw} is not a seat count` };
}
