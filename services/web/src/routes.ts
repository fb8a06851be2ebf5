/** Every route of the dashboard, by area. */
import type { Logger } from "@coursemesh/shared/logger.ts";
import type { Route } from "./app.ts";
import type { Backends } from "./backends.ts";
import type { LiveStreams } from "./live.ts";
import { courseRoutes } from "./pages/courses.ts";
import { enrollmentRoutes } from "./pages/enrollment.ts";
import { monitorRoutes } from "./pages/monitors.ts";
import { rosterRoutes } from "./pages/roster.ts";
import { uploadRoutes } from "./pages/uploads.ts";

export interface RouteDeps {
  backends: Backends;
  live: LiveStreams;
  logger: Logger;
  maxUploadBytes: number;
  sessionSecret: string;
  cookieSecure: boolean;
}

/** The routes of all areas. */
export function webRoutes(deps: RouteDeps): Route[] {
  return [...monitorRoutes(deps), ...courseRoutes(deps), ...rosterRoutes(deps), ...enrollmentRoutes(deps), ...uploadRoutes(deps)];
}
