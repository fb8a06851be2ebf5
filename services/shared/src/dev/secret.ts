import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";

/** Local development state (embedded Postgres data, NATS store, the dev JWT secret); git-ignored. */
export const DEV_DIR = process.env.DEV_DIR ?? join(new URL("../../../../", import.meta.url).pathname, ".dev");

/** The JWT secret for local development: AUTH_JWT_SECRET, else one made once and kept in .dev/. */
export function devJwtSecret(): string {
  if (process.env.AUTH_JWT_SECRET) return process.env.AUTH_JWT_SECRET;
  const file = join(DEV_DIR, "jwt-secret");
  if (!existsSync(file)) {
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, randomBytes(32).toString("hex"), { mode: 0o600 });
  }
  return readFileSync(file, "utf8").trim();
}
