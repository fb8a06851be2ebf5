/**
 * Job changes from every replica, through Postgres LISTEN on `ingest_job_changed` (a trigger on
 * `jobs` notifies "<id> <status>" on each visible change). One listening connection per process
 * fans out to the WatchJob streams and running workers that care about a job.
 */
import type { Sql } from "@coursemesh/shared/db.ts";
import type { Logger } from "@coursemesh/shared/logger.ts";

export const JOB_CHANGED_CHANNEL = "ingest_job_changed";

/** The job's status as of the change; undefined after a reconnect, when changes may have been missed. */
export type JobChangeListener = (status: string | undefined) => void;

export interface JobChanges {
  /** Calls `listener` after job `id` changes (and after a reconnect). */
  subscribe(id: string, listener: JobChangeListener): () => void;
  close(): Promise<void>;
}

/** Starts listening; resolves once the LISTEN is in place. */
export async function listenForJobChanges(sql: Sql, logger: Logger): Promise<JobChanges> {
  const listeners = new Map<string, Set<JobChangeListener>>();
  const call = (listener: JobChangeListener, status: string | undefined) => {
    try {
      listener(status);
    } catch (error) {
      logger.error({ err: error }, "job change listener failed");
    }
  };
  let listening = false;
  const { unlisten } = await sql.listen(
    JOB_CHANGED_CHANNEL,
    (payload) => {
      const [jobId = "", status] = payload.split(" ");
      for (const listener of listeners.get(jobId) ?? []) call(listener, status);
    },
    () => {
      // A reconnect may have dropped notifications: everyone looks again.
      if (listening) for (const set of listeners.values()) for (const listener of set) call(listener, undefined);
      listening = true;
    },
  );
  return {
    subscribe(id, listener) {
      const set = listeners.get(id) ?? new Set();
      set.add(listener);
      listeners.set(id, set);
      return () => {
        set.delete(listener);
        if (set.size === 0 && listeners.get(id) === set) listeners.delete(id);
      };
    },
    async close() {
      listeners.clear();
      await unlisten().catch(() => {});
    },
  };
}
