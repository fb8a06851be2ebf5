/**
 * Generates the TypeScript code and the descriptor image for the coursemesh protos.
 *
 *   bun run gen                                  # writes proto/gen
 *   bun run proto/scripts/gen.ts --out /tmp/gen  # writes elsewhere (the staleness test does this)
 *
 * Runs `buf generate` (ts-proto from node_modules, see proto/buf.gen.yaml) and `buf build` (a binary
 * FileDescriptorSet with imports, gen/coursemesh.binpb) with cwd proto/, into a fresh staging
 * directory, then replaces the output directory with it. The output depends only on the .proto
 * files and the pinned tool versions.
 */
import { cpSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

export const protoDir = path.resolve(import.meta.dir, "..");
export const repoRoot = path.resolve(protoDir, "..");
export const defaultOutDir = path.join(protoDir, "gen");
export const bufBin = path.join(repoRoot, "node_modules", ".bin", "buf");
/** File name of the descriptor image inside the output directory. */
export const imageName = "coursemesh.binpb";

function run(args: string[]): void {
  const proc = Bun.spawnSync([bufBin, ...args], {
    cwd: protoDir,
    stdout: "pipe",
    stderr: "pipe",
  });
  if (proc.exitCode !== 0) {
    const out = `${proc.stdout.toString()}${proc.stderr.toString()}`.trim();
    throw new Error(`buf ${args.join(" ")} failed (exit ${proc.exitCode})${out ? `:\n${out}` : ""}`);
  }
}

function assertSafeOutDir(outDir: string): void {
  const rel = path.relative(outDir, protoDir);
  // Refuse to wipe proto/ itself or any directory that contains it (the repo root, /, ...).
  if (rel === "" || !rel.startsWith("..")) {
    throw new Error(`refusing to clean ${outDir}: it contains the proto sources`);
  }
}

/** Generates into outDir (default proto/gen), removing whatever was there first. */
export function generate(outDir: string = defaultOutDir): void {
  const target = path.resolve(outDir);
  assertSafeOutDir(target);
  const staging = mkdtempSync(path.join(tmpdir(), "coursemesh-gen-"));
  try {
    // buf.gen.yaml writes to `gen` under the -o base directory.
    run(["generate", "-o", staging]);
    const generated = path.join(staging, "gen");
    mkdirSync(generated, { recursive: true });
    run(["build", "-o", path.join(generated, imageName)]);
    rmSync(target, { recursive: true, force: true });
    mkdirSync(path.dirname(target), { recursive: true });
    cpSync(generated, target, { recursive: true });
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}

function parseArgs(argv: string[]): { out: string } {
  let out = defaultOutDir;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--out") {
      const value = argv[++i];
      if (!value) throw new Error("--out needs a directory");
      out = value;
    } else if (arg?.startsWith("--out=")) {
      out = arg.slice("--out=".length);
    } else if (arg === "--help" || arg === "-h") {
      console.log("usage: bun run proto/scripts/gen.ts [--out <dir>]  (default proto/gen)");
      process.exit(0);
    } else {
      throw new Error(`unknown argument: ${arg}`);
    }
  }
  return { out: path.resolve(out) };
}

if (import.meta.main) {
  try {
    const { out } = parseArgs(process.argv.slice(2));
    generate(out);
    console.log(`generated ${path.relative(process.cwd(), out) || "."}`);
  } catch (err) {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  }
}
