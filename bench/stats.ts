/** Small number helpers the benchmarks share. */

/** `x` rounded to `digits` decimals. */
export const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;

/** The p-th percentile (nearest rank) of ascending `sorted`; NaN when it is empty. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}
