import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";

/** Local development state (embedded Postgres data, NATS store, the dev secrets); git-ignored. */
export const DEV_DIR = process.env.DEV_DIR ?? join(new URL("../../../../", import.meta.url).pathname, ".dev");

/** The variable's value if set, else a random secret made once and kept in .dev/<file>. */
function devSecret(variable: string, file: string): string {
  const given = process.env[variable];
  if (given) return given;
  const path = join(DEV_DIR, file);
  if (!existsSync(path)) {
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, randomBytes(32).toString("hex"), { mode: 0o600 });
  }
  return readFileSync(path, "utf8").trim();
}

/** The JWT secret for local development: AUTH_JWT_SECRET, else one made once and kept in .dev/. */
export function devJwtSecret(): string {
  return devSecret("AUTH_JWT_SECRET", "jwt-secret");
}

/** The dashboard's session secret for local development: WEB_SESSION_SECRET, else one kept in .dev/. */
export function devSessionSecret(): string {
  return devSecret("WEB_SESSION_SECRET", "web-session-secret");
}
