/** The dashboard's script and stylesheet: plain files, no build step, cached by versioned URL. */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const STATIC_DIR = new URL("./static/", import.meta.url).pathname;
const FILES: Record<string, string> = {
  "/static/app.js": "text/javascript; charset=utf-8",
  "/static/app.css": "text/css; charset=utf-8",
};
const cache = new Map<string, Uint8Array>();

/** Serves a known static file; URLs carry `?v=` so a week of caching is safe. */
export async function serveStatic(pathname: string): Promise<Response> {
  const type = FILES[pathname];
  if (!type) return new Response("not found", { status: 404 });
  let body = cache.get(pathname);
  if (!body) {
    body = new Uint8Array(await Bun.file(join(STATIC_DIR, pathname.slice("/static/".length))).arrayBuffer());
    cache.set(pathname, body);
  }
  return new Response(body, { headers: { "content-type": type, "cache-control": "public, max-age=604800, immutable" } });
}

/** A short hash of the static files' contents. */
export function assetVersion(): string {
  const hash = createHash("sha256");
  for (const pathname of Object.keys(FILES)) hash.update(readFileSync(join(STATIC_DIR, pathname.slice("/static/".length))));
  return hash.digest("hex").slice(0, 12);
}
