/**
 * The allocator's invariants, checked against the database as a whole. The constraints enforce
 * what a single row or index can; this checks what spans rows. Tests and the benchmark run it after
 * every stampede; an operator can run it against a live database (it only reads).
 */
import type { Sql } from "@coursemesh/shared/db.ts";

export interface InvariantOptions {
  /** Also require that no request is still PENDING (after a burst has been fully decided). */
  allDecided?: boolean;
}

/** Every broken invariant, as a sentence naming the rows; empty when all hold. */
export async function checkInvariants(sql: Sql, options: InvariantOptions = {}): Promise<string[]> {
  const problems: string[] = [];
  const report = (rows: readonly Record<string, unknown>[], describe: (row: Record<string, any>) => string) => {
    for (const row of rows.slice(0, 20)) problems.push(describe(row));
    if (rows.length > 20) problems.push(`… and ${rows.length - 20} more like the above`);
  };

  report(
    await sql`
      select c.id, c.code, c.capacity, c.seats_taken, c.waitlist_length,
        count(r.id) filter (where r.status = 'ENROLLED')::int as enrolled,
        count(r.id) filter (where r.status = 'WAITLISTED')::int as waitlisted
      from allocator.courses c left join allocator.requests r on r.course_id = c.id
      group by c.id
      having c.seats_taken > c.capacity or c.seats_taken < 0
        or c.seats_taken <> count(r.id) filter (where r.status = 'ENROLLED')
        or c.waitlist_length <> count(r.id) filter (where r.status = 'WAITLISTED')
        or (c.seats_taken < c.capacity and c.waitlist_length > 0)`,
    (row) =>
      `course ${row.code} (${row.id}): capacity ${row.capacity}, seats_taken ${row.seats_taken} with ${row.enrolled} ENROLLED, ` +
      `waitlist_length ${row.waitlist_length} with ${row.waitlisted} WAITLISTED (seats must not exceed capacity, counters must match, ` +
      `and nobody waits while a seat is free)`,
  );

  report(
    await sql`
      select course_id, student_id, count(*)::int as live
      from allocator.requests where status in ('ENROLLED', 'WAITLISTED')
      group by course_id, student_id having count(*) > 1`,
    (row) => `student ${row.student_id} has ${row.live} live enrollments in course ${row.course_id}`,
  );

  report(
    await sql`
      select id, status, decided_at from allocator.requests
      where (status = 'PENDING') <> (decided_at is null)
        or (status = 'ENROLLED' and enrolled_at is null)
        or (status in ('ENROLLED', 'WAITLISTED', 'DROPPED', 'REJECTED') and decided_at is null)
        or (status = 'REJECTED' and reason not in ('ALREADY_ENROLLED', 'ALREADY_WAITLISTED', 'ALREADY_PENDING'))
        or (status = 'WAITLISTED' and reason <> 'COURSE_FULL')`,
    (row) => `request ${row.id} is ${row.status} with decided_at ${row.decided_at}: a request has exactly one decision, with its time and reason`,
  );

  // Fairness inside a batch: a request decided together with a waitlisted one never had a worse score and a seat.
  report(
    await sql`
      select e.id as enrolled, w.id as waitlisted, e.course_id
      from allocator.requests e
      join allocator.requests w
        on w.course_id = e.course_id and w.decided_at = e.decided_at and w.status <> 'REJECTED'
       and (w.enrolled_at is null or w.enrolled_at > w.decided_at)
       and (e.score, e.id) > (w.score, w.id)
      where e.enrolled_at = e.decided_at
      limit 100`,
    (row) => `course ${row.course_id}: request ${row.enrolled} got a seat in the batch that waitlisted ${row.waitlisted}, which ranks before it`,
  );

  // Waitlist order is score order: a promoted request had the best score of everyone waiting then.
  report(
    await sql`
      select p.id as promoted, w.id as waiting, p.course_id
      from allocator.requests p
      join allocator.requests w
        on w.course_id = p.course_id and w.status = 'WAITLISTED' and w.decided_at < p.enrolled_at and (w.score, w.id) < (p.score, p.id)
      where p.status in ('ENROLLED', 'DROPPED') and p.enrolled_at > p.decided_at
      limit 100`,
    (row) => `course ${row.course_id}: request ${row.promoted} was promoted ahead of ${row.waiting}, which still waits with a better score`,
  );

  if (options.allDecided) {
    const [row] = await sql`select count(*)::int as n from allocator.requests where status = 'PENDING'`;
    if (row!.n > 0) problems.push(`${row!.n} requests are still PENDING`);
  }
  return problems;
}

/** Waits until no request is PENDING (polling; for tests and the benchmark). Returns false on timeout. */
export async function waitUntilAllDecided(sql: Sql, timeoutMs: number, pollMs = 20): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [row] = await sql`select exists (select 1 from allocator.requests where status = 'PENDING') as pending`;
    if (!row!.pending) return true;
    if (Date.now() > deadline) return false;
    await Bun.sleep(pollMs);
  }
}
