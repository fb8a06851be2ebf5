/** Every route of the dashboard, by area. */
import type { Logger } from "@coursemesh/shared/logger.ts";
import type { Route } from "./app.ts";
import type { Backends } from "./backends.ts";
import type { LiveStreams } from "./live.ts";

export interface RouteDeps {
  backends: Backends;
  live: LiveStreams;
  logger: Logger;
  maxUploadBytes: number;
}

/** The routes of all areas. */
export function webRoutes(_deps: RouteDeps): Route[] {
  return [];
}
