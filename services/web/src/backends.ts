/**
 * One gRPC client per backend service. Calls carry the signed-in user's token, so each service
 * applies its own rules to the user, never to the dashboard.
 */
import type { Config } from "@coursemesh/shared/config.ts";
import { createClient } from "@coursemesh/shared/grpc/client.ts";
import { EnrollmentServiceClient } from "@coursemesh/proto/coursemesh/allocator/v1/allocator.ts";
import { IngestServiceClient } from "@coursemesh/proto/coursemesh/ingest/v1/ingest.ts";
import { NotificationServiceClient } from "@coursemesh/proto/coursemesh/notifier/v1/notifier.ts";
import { MonitorServiceClient } from "@coursemesh/proto/coursemesh/scraper/v1/scraper.ts";

export interface Backends {
  monitors: MonitorServiceClient;
  enrollment: EnrollmentServiceClient;
  notifications: NotificationServiceClient;
  ingest: IngestServiceClient;
  close(): void;
}

const DEADLINE_MS = 10_000;

/** Clients for SCRAPER_ADDR, ALLOCATOR_ADDR, NOTIFIER_ADDR and INGEST_ADDR. */
export function createBackends(config: Pick<Config, "SCRAPER_ADDR" | "ALLOCATOR_ADDR" | "NOTIFIER_ADDR" | "INGEST_ADDR">): Backends {
  const options = { caller: "web", defaultDeadlineMs: DEADLINE_MS };
  const monitors = createClient(MonitorServiceClient, config.SCRAPER_ADDR!, {
    ...options,
    // CheckNow waits for a browser check.
    defaultDeadlineMs: 45_000,
    idempotentMethods: ["GetMonitor", "ListMonitors", "ListSeatChanges"],
  });
  const enrollment = createClient(EnrollmentServiceClient, config.ALLOCATOR_ADDR!, {
    ...options,
    idempotentMethods: ["GetCourse", "ListCourses", "GetRequest", "ListRequests", "ListEnrollments", "ListWaitlist"],
  });
  const notifications = createClient(NotificationServiceClient, config.NOTIFIER_ADDR!, { ...options, idempotentMethods: ["ListNotifications"] });
  const ingest = createClient(IngestServiceClient, config.INGEST_ADDR!, { ...options, idempotentMethods: ["GetJob", "ListJobs", "GetCourseOutline"] });
  return {
    monitors,
    enrollment,
    notifications,
    ingest,
    close() {
      for (const client of [monitors, enrollment, notifications, ingest]) client.close();
    },
  };
}
