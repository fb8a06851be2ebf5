/** The whole workspace type-checks under the strict tsconfig (Bun runs TypeScript without checking it). */
import { expect, test } from "bun:test";
import { join } from "node:path";

test("tsc --noEmit passes over services, proto, tests and bench", async () => {
  const root = join(import.meta.dir, "..");
  const child = Bun.spawn([join(root, "node_modules/.bin/tsc"), "--noEmit", "-p", join(root, "tsconfig.json")], {
    cwd: root,
    stdout: "pipe",
    stderr: "pipe",
  });
  const [code, stdout] = await Promise.all([child.exited, new Response(child.stdout).text()]);
  expect(stdout.trim()).toBe("");
  expect(code).toBe(0);
}, 180_000);
