import { describe, expect, test } from "bun:test";
import { parseSeatText, parseWithPattern, seatsChanged, seatsFromJsonValue } from "../src/seats.ts";

describe("seat text as registrars print it", () => {
  const cases: [string, { open?: number; capacity?: number; waitlist?: number }][] = [
    ["Seats: 12/30", { open: 12, capacity: 30 }],
    ["Seats 0 / 30", { open: 0, capacity: 30 }],
    ["3 of 30 seats open", { open: 3, capacity: 30 }],
    ["3 of 30 seats available", { open: 3, capacity: 30 }],
    ["Available: 5 of 40", { open: 5, capacity: 40 }],
    ["Open Seats: 7/25", { open: 7, capacity: 25 }],
    ["Full", { open: 0 }],
    ["Class Full", { open: 0 }],
    ["Closed", { open: 0 }],
    ["Cancelled", { open: 0 }],
    ["No seats available", { open: 0 }],
    ["Waitlist: 4", { waitlist: 4 }],
    ["Full, Waitlist: 4", { open: 0, waitlist: 4 }],
    ["Full (Waitlisted: 12)", { open: 0, waitlist: 12 }],
    ["0 of 30 seats open, 6 on waitlist", { open: 0, capacity: 30, waitlist: 6 }],
    ["12 seats available", { open: 12 }],
    ["2 seats left", { open: 2 }],
    ["Seats remaining: 9", { open: 9 }],
    ["5 open seats", { open: 5 }],
    ["Open (14 seats)", { open: 14 }],
    ["Enrolled: 25/30", { open: 5, capacity: 30 }],
    ["28 / 30 enrolled", { open: 2, capacity: 30 }],
    ["Class Capacity 30 Enrollment Total 28 Available Seats 2", { open: 2, capacity: 30 }],
    ["Class Capacity 30 Enrollment Total 30 Available Seats 0 Wait List Capacity 10 Wait List Total 3", { open: 0, capacity: 30, waitlist: 3 }],
    ["Capacity: 120  Enrolled: 120  Waitlist: 15", { open: 0, capacity: 120, waitlist: 15 }],
    ["  Seats:\n 12 /\t30 ", { open: 12, capacity: 30 }],
    ["12/30", { open: 12, capacity: 30 }],
    ["7", { open: 7 }],
  ];
  for (const [text, expected] of cases) {
    test(JSON.stringify(text), () => {
      const reading = parseSeatText(text);
      expect({ open: reading.open, capacity: reading.capacity, waitlist: reading.waitlist }).toEqual({
        open: expected.open,
        capacity: expected.capacity,
        waitlist: expected.waitlist,
      });
      expect(reading.raw).toBe(text.replace(/\s+/g, " ").trim());
      expect(reading.note).toBeUndefined();
    });
  }

  test("unknown text keeps the raw value and says it could not parse", () => {
    const reading = parseSeatText("TBA — see department");
    expect(reading).toEqual({ raw: "TBA — see department", note: 'could not parse seat text "TBA — see department"; showing it as found' });
  });

  test("a custom pattern's named groups", () => {
    expect(parseWithPattern("Places libres 4 sur 25", /libres (?<open>\d+) sur (?<capacity>\d+)/i)).toEqual({ raw: "Places libres 4 sur 25", open: 4, capacity: 25 });
    expect(parseWithPattern("nothing here", /(?<open>\d+) left/).note).toContain("the pattern found no seat counts");
  });
});

describe("seats from JSON values", () => {
  test("a number is open seats; an object gives its counts; text is parsed", () => {
    expect(seatsFromJsonValue(3)).toEqual({ open: 3, raw: "3" });
    expect(seatsFromJsonValue({ open: 0, capacity: 30, waitlist: 2 })).toMatchObject({ open: 0, capacity: 30, waitlist: 2 });
    expect(seatsFromJsonValue({ enrolled: 28, capacity: 30 })).toMatchObject({ open: 2, capacity: 30 });
    expect(seatsFromJsonValue("3 of 30 seats open")).toMatchObject({ open: 3, capacity: 30 });
    expect(seatsFromJsonValue([1, 2]).note).toContain("is not a seat count");
  });
});

describe("what counts as a change", () => {
  test("counts decide when there are counts; a reworded page with the same numbers is no change", () => {
    expect(seatsChanged(parseSeatText("Seats: 3/30"), parseSeatText("3 of 30 seats open"))).toBe(false);
    expect(seatsChanged(parseSeatText("Seats: 3/30"), parseSeatText("Seats: 4/30"))).toBe(true);
    expect(seatsChanged(parseSeatText("Full"), parseSeatText("Full, Waitlist: 2"))).toBe(true);
    expect(seatsChanged(null, parseSeatText("Full"))).toBe(true);
  });
  test("text decides when nothing could be parsed", () => {
    expect(seatsChanged(parseSeatText("TBA"), parseSeatText("TBA"))).toBe(false);
    expect(seatsChanged(parseSeatText("TBA"), parseSeatText("See dept"))).toBe(true);
  });
});
