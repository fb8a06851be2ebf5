/** Small formatters shared by the pages. */
import { html, type Html } from "./html.ts";

/** "12 s ago", "3 min ago", "2 h ago", "4 d ago" (app.js keeps them current with the same rules). */
export function ago(date: Date, nowMs = Date.now()): string {
  const seconds = Math.max(0, Math.round((nowMs - date.getTime()) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86_400)} d ago`;
}

/** A `<time>` that app.js updates every second; "never" when there is no date. */
export function relativeTime(date: Date | undefined, never = "never"): Html {
  if (!date) return html`<span class="muted">${never}</span>`;
  return html`<time datetime="${date.toISOString()}" data-relative title="${date.toISOString().replace("T", " ").slice(0, 19)} UTC">${ago(date)}</time>`;
}

/** The name of a proto enum value without its prefix: `MONITOR_MODE_ACTIVE` → `ACTIVE`. */
export function enumName(all: Record<string | number, string | number>, value: number, prefix: string): string {
  const name = all[value];
  return typeof name === "string" ? name.replace(prefix, "") : "UNKNOWN";
}

/** Sentence case for an enum name: `ACTIVE` → `Active`. */
export function label(name: string): string {
  return name.charAt(0) + name.slice(1).toLowerCase().replace(/_/g, " ");
}

/** A coloured badge; `tone` picks the colour, the text says the same in words. */
export function badge(text: string, tone: "ok" | "warn" | "bad" | "idle"): Html {
  return html`<span class="badge ${tone}">${text}</span>`;
}
