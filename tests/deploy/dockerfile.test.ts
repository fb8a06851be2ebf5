/**
 * deploy/Dockerfile, read with dockerfile-ast (no Docker engine here): the Bun base image is the
 * version package.json pins, each service's (and the dashboard's) target runs as a non-root user
 * with production dependencies only, everything it copies and runs exists in the repo, and the
 * scraper's image brings Debian's Chromium and fonts.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { DockerfileParser, type Copy, type Instruction } from "dockerfile-ast";
import { PROCESS_NAMES, readsVariable, SERVICE_NAMES, type ConfigName, type ProcessName } from "../../services/shared/src/config.ts";
import { envReadBy, isPinnedImage, render, REPO_ROOT, workloads } from "./support.ts";

interface Stage {
  name: string;
  /** The image or earlier stage this one starts from. */
  from: string;
  instructions: Instruction[];
}

const DOCKERFILE = "deploy/Dockerfile";
const dockerfile = DockerfileParser.parse(readFileSync(join(REPO_ROOT, DOCKERFILE), "utf8"));
const rootPackage = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as {
  packageManager: string;
  workspaces: string[];
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};
const TARGETS = [...PROCESS_NAMES, "demo-registrar"] as const;
/** Targets that own a database schema, so carry their migrations. */
const hasMigrations = (target: string) => (SERVICE_NAMES as readonly string[]).includes(target);
/** Runtime settings of Bun and Node themselves, not coursemesh configuration. */
const RUNTIME_ENV = new Set(["NODE_ENV", "BUN_RUNTIME_TRANSPILER_CACHE_PATH"]);

/** Build arguments declared before the first FROM, with their defaults. */
const buildArgs = new Map(
  dockerfile.getInitialARGs().map((arg) => [arg.getProperty()!.getName(), arg.getProperty()!.getValue() ?? ""] as const),
);
const expand = (text: string) => text.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (_, a, b) => buildArgs.get(a ?? b) ?? "");

function stages(): Stage[] {
  const list: Stage[] = [];
  for (const instruction of dockerfile.getInstructions()) {
    if (instruction.getKeyword() === "FROM") {
      const args = instruction.getArguments().map((a) => a.getValue());
      list.push({ name: (args[2] ?? `stage-${list.length}`).toLowerCase(), from: expand(args[0]!), instructions: [] });
    } else list.at(-1)?.instructions.push(instruction);
  }
  return list;
}

/** A target's stages from the base image down to itself. */
function chain(target: string): Stage[] {
  const all = stages();
  const path: Stage[] = [];
  for (let stage = all.find((s) => s.name === target); stage; stage = all.find((s) => s.name === stage!.from)) path.unshift(stage);
  return path;
}

const argumentsOf = (instruction: Instruction) => instruction.getArguments().map((a) => a.getValue());
const isFromStage = (instruction: Instruction) => Boolean((instruction as Copy).getFromFlag?.());
const jsonArray = (instruction: Instruction): string[] => JSON.parse(instruction.getArgumentsContent() ?? "[]");
const of = (path: Stage[], keyword: string) => path.flatMap((stage) => stage.instructions.filter((i) => i.getKeyword() === keyword));

/** COPY sources from the build context (the repository root). */
function contextSources(path: Stage[]): string[] {
  return of(path, "COPY")
    .filter((copy) => !isFromStage(copy))
    .flatMap((copy) => argumentsOf(copy).slice(0, -1));
}

function envOf(path: Stage[]): Map<string, string> {
  const env = new Map<string, string>();
  for (const instruction of of(path, "ENV")) {
    for (const property of (instruction as unknown as { getProperties(): { getName(): string; getValue(): string }[] }).getProperties()) {
      env.set(property.getName(), property.getValue());
    }
  }
  return env;
}

// kustomize takes a few seconds on a busy machine.
beforeAll(() => {
  for (const overlay of ["dev", "prod"]) render(`k8s/overlays/${overlay}`);
}, 60_000);

test("the Bun base image is pinned to package.json's packageManager version", () => {
  const bunVersion = rootPackage.packageManager.replace(/^bun@/, "");
  const [base] = stages();
  expect(base!.from).toStartWith(`oven/bun:${bunVersion}`);
  expect(base!.from).toMatch(new RegExp(`^oven/bun:${bunVersion.replaceAll(".", "\\.")}(-[a-z]+)?$`));
});

test("every image the build starts from is pinned", () => {
  const names = new Set(stages().map((s) => s.name));
  for (const stage of stages()) if (!names.has(stage.from)) expect({ stage: stage.name, image: stage.from, pinned: isPinnedImage(stage.from) }).toMatchObject({ pinned: true });
});

test("dependencies are installed for production only, exactly as locked, with every workspace's manifest", () => {
  const deps = chain("deps");
  const installs = of(deps, "RUN").map((run) => run.getArgumentsContent() ?? "");
  expect(installs).toContain("bun install --production --frozen-lockfile");
  const copied = new Set(contextSources(deps));
  const workspaces = rootPackage.workspaces.flatMap((pattern) =>
    [...new Bun.Glob(`${pattern}/package.json`).scanSync({ cwd: REPO_ROOT })].map((path) => path.replaceAll("\\", "/")),
  );
  for (const manifest of ["package.json", "bun.lock", ...workspaces]) expect(copied).toContain(manifest);
});

test("everything copied from the build context exists and passes deploy/Dockerfile.dockerignore", () => {
  const rules = readFileSync(join(REPO_ROOT, "deploy/Dockerfile.dockerignore"), "utf8")
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line && !line.startsWith("#"));
  // Docker's rule: the last matching pattern decides; "!" re-includes.
  const included = (path: string) => {
    let keep = true;
    for (const rule of rules) {
      const negated = rule.startsWith("!");
      const pattern = negated ? rule.slice(1) : rule;
      const parts = path.split("/");
      const matches = parts.some((_, i) => new Bun.Glob(pattern).match(parts.slice(0, i + 1).join("/")));
      if (matches) keep = negated;
    }
    return keep;
  };
  for (const source of new Set(stages().flatMap((s) => contextSources([s])))) {
    expect({ source, exists: existsSync(join(REPO_ROOT, source)), included: included(source) }).toEqual({ source, exists: true, included: true });
  }
});

describe.each(TARGETS)("target %s", (target) => {
  const path = () => chain(target);

  test("exists, runs as a non-root user and starts a file that is in the image", () => {
    expect(path().at(-1)?.name).toBe(target);
    const user = of(path(), "USER").at(-1)?.getArgumentsContent() ?? "root";
    expect(user.split(":")[0]).not.toMatch(/^(root|0)$/);
    const entrypoint = jsonArray(of(path(), "ENTRYPOINT").at(-1)!);
    const script = entrypoint.find((arg) => arg.endsWith(".ts"))!;
    expect(existsSync(join(REPO_ROOT, script))).toBe(true);
    expect(entrypoint.slice(entrypoint.indexOf("bun"), entrypoint.indexOf(script))).toEqual(["bun", "run"]);
    const copied = contextSources(path());
    expect(copied.some((source) => script.startsWith(`${source}/`) || script === source)).toBe(true);
    if (target !== "demo-registrar") expect(script).toBe(`services/${target}/src/main.ts`);
  });

  test("carries what Bun needs at run time: dependencies, tsconfig paths, generated protos, shared code and migrations", () => {
    const copied = contextSources(path());
    expect(of(path(), "COPY").some((copy) => isFromStage(copy) && argumentsOf(copy).includes("/app/node_modules"))).toBe(true);
    for (const needed of ["tsconfig.json", "proto/gen", "services/shared/src", "services/shared/migrations"]) expect(copied).toContain(needed);
    if (target !== "demo-registrar") expect(copied).toContain(`services/${target}/src`);
    if (hasMigrations(target)) expect(copied).toContain(`services/${target}/migrations`);
  });

  test("sets only environment the program reads (or the runtime's own)", () => {
    const reads = target === "demo-registrar" ? envReadBy("services/scraper/src/demo/registrar.ts") : undefined;
    for (const name of envOf(path()).keys()) {
      if (RUNTIME_ENV.has(name)) continue;
      const read = reads ? reads.has(name) : readsVariable(target as ProcessName, name as ConfigName);
      expect({ name, read }).toEqual({ name, read: true });
    }
  });
});

test("only the scraper's image carries a browser: the dashboard's is the platform and its own code", () => {
  const web = chain("web");
  expect(web.map((stage) => stage.name)).toEqual(["base", "platform", "web"]);
  expect(of(web, "RUN")).toEqual([]);
  expect(contextSources(web.slice(-1)).sort()).toEqual(["services/web/package.json", "services/web/src"]);
});

test("the scraper image installs Chromium and fonts from Debian and points SCRAPER_CHROMIUM_PATH at it", () => {
  const runs = of(chain("scraper"), "RUN").map((run) => run.getArgumentsContent() ?? "");
  const install = runs.find((run) => /apt-get install/.test(run)) ?? "";
  expect(install).toMatch(/\bchromium\b/);
  expect(install).toMatch(/\bfonts-[a-z0-9-]+\b/);
  expect(install).toContain("apt-get update");
  expect(envOf(chain("scraper")).get("SCRAPER_CHROMIUM_PATH")).toBe("/usr/bin/chromium");
});

/**
 * The repository files a program loads, following imports (relative and the tsconfig @coursemesh/*
 * paths) and worker files named with `new URL("./x.ts", import.meta.url)`, with the packages it imports.
 */
function importGraph(entry: string): { files: Set<string>; packages: Map<string, string> } {
  const transpiler = new Bun.Transpiler({ loader: "ts" });
  const files = new Set<string>();
  const packages = new Map<string, string>();
  const resolveFile = (path: string) => [path, `${path}.ts`, `${path}/index.ts`].find((candidate) => existsSync(join(REPO_ROOT, candidate)));
  const pending = [entry];
  while (pending.length > 0) {
    const file = pending.pop()!;
    if (files.has(file)) continue;
    files.add(file);
    const code = readFileSync(join(REPO_ROOT, file), "utf8");
    const specifiers = [
      ...transpiler.scanImports(code).map((found) => found.path),
      ...[...code.matchAll(/new URL\(\s*["'](\.{1,2}\/[^"']+\.ts)["']\s*,\s*import\.meta\.url/g)].map((match) => match[1]!),
    ];
    for (const specifier of specifiers) {
      let local: string | undefined;
      if (specifier.startsWith(".")) local = join(file, "..", specifier);
      else if (specifier.startsWith("@coursemesh/shared/")) local = `services/shared/src/${specifier.slice("@coursemesh/shared/".length)}`;
      else if (specifier.startsWith("@coursemesh/proto/")) local = `proto/gen/${specifier.slice("@coursemesh/proto/".length)}`;
      else if (specifier.startsWith("node:") || specifier === "bun" || specifier.startsWith("bun:")) continue;
      else {
        const name = specifier.startsWith("@") ? specifier.split("/").slice(0, 2).join("/") : specifier.split("/")[0]!;
        packages.set(name, file);
        continue;
      }
      const resolved = resolveFile(local);
      if (!resolved) throw new Error(`${file}: cannot resolve ${specifier}`);
      pending.push(resolved);
    }
  }
  return { files, packages };
}

describe.each(TARGETS)("what target %s runs", (target) => {
  const entry = () => jsonArray(of(chain(target), "ENTRYPOINT").at(-1)!).find((arg) => arg.endsWith(".ts"))!;

  test("imports only production dependencies (all the image installs)", () => {
    const { packages } = importGraph(entry());
    const notProduction = [...packages].filter(([name]) => !(name in rootPackage.dependencies)).map(([name, file]) => `${file} imports ${name}`);
    expect(notProduction).toEqual([]);
  });

  test("loads only files the image copies", () => {
    const copied = contextSources(chain(target));
    const missing = [...importGraph(entry()).files].filter((file) => !copied.some((source) => file === source || file.startsWith(`${source}/`)));
    expect(missing).toEqual([]);
  });
});

test("the images Kubernetes and compose run are targets of this Dockerfile", () => {
  const targets = new Set(stages().map((s) => s.name));
  const images = ["k8s/overlays/dev", "k8s/overlays/prod"].flatMap((overlay) =>
    workloads(render(overlay)).flatMap((w) => w.pod.containers.map((c) => c.image)),
  );
  for (const image of images.filter((i) => i.startsWith("coursemesh/"))) {
    const target = image.slice("coursemesh/".length).split(":")[0]!;
    expect({ image, target: targets.has(target) }).toEqual({ image, target: true });
  }
});
