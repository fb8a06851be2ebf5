/**
 * k8s/: every overlay renders, every object is valid for the Kubernetes API, every workload is
 * hardened and probed, and every coursemesh service and the web dashboard get exactly the
 * configuration they read.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { CONFIG_REGISTRY, loadConfig, SERVICE_NAMES, SERVICE_PORTS, type ProcessName, type ServiceName } from "../../services/shared/src/config.ts";
import {
  baseName,
  containerEnv,
  filesUnder,
  isPinnedImage,
  registryProblems,
  render,
  REPO_ROOT,
  schemaProblems,
  serviceOf,
  workloads,
  type Container,
  type K8sObject,
  type Workload,
} from "./support.ts";

const OVERLAYS = ["k8s/overlays/dev", "k8s/overlays/prod"] as const;
const NAMESPACE = "coursemesh";
/** Secrets production creates by hand (README "Deploy"); the dev overlay generates the same ones. */
const HAND_MADE_SECRETS = new Set(["coursemesh-secrets", "grafana"]);

const byKind = (objects: K8sObject[], kind: string) => objects.filter((object) => object.kind === kind);
const named = (objects: K8sObject[], kind: string, name: string) => objects.find((o) => o.kind === kind && o.metadata.name === name);
/** The Deployments of the four services and of the web dashboard. */
const processWorkloads = (objects: K8sObject[]) =>
  workloads(objects).filter((w) => w.kind === "Deployment" && serviceOf(w) !== undefined) as (Workload & { name: ProcessName })[];
/** The Deployments of the four services (gRPC, a database, NATS, migrations). */
const serviceWorkloads = (objects: K8sObject[]) =>
  processWorkloads(objects).filter((w) => (SERVICE_NAMES as readonly string[]).includes(w.name)) as (Workload & { name: ServiceName })[];
const selects = (selector: Record<string, string> | undefined, labels: Record<string, string>) =>
  selector !== undefined && Object.entries(selector).every(([key, value]) => labels[key] === value);
const allContainers = (w: Workload): Container[] => [...(w.pod.initContainers ?? []), ...w.pod.containers];

// kustomize takes a few seconds on a busy machine; every test below reads these renders.
beforeAll(() => {
  for (const dir of ["k8s/base", ...OVERLAYS]) expect(render(dir).length).toBeGreaterThan(0);
}, 60_000);

test("the base and both overlays render", () => {
  for (const dir of ["k8s/base", ...OVERLAYS]) expect(render(dir).length).toBeGreaterThan(0);
});

describe.each(OVERLAYS)("%s", (overlay) => {
  const objects = () => render(overlay);

  test("every object is valid against the Kubernetes schemas, with no unknown fields", async () => {
    const problems = (await Promise.all(objects().map(schemaProblems))).flat();
    expect(problems).toEqual([]);
  });

  test("everything lives in the coursemesh namespace, which enforces the restricted Pod Security Standard", () => {
    const namespace = named(objects(), "Namespace", NAMESPACE);
    expect(namespace?.metadata.labels?.["pod-security.kubernetes.io/enforce"]).toBe("restricted");
    const elsewhere = objects()
      .filter((o) => o.kind !== "Namespace" && o.metadata.namespace !== NAMESPACE)
      .map((o) => `${o.kind}/${o.metadata.name}`);
    expect(elsewhere).toEqual([]);
  });

  test("every workload has pinned images, requests and limits, and runs non-root on a read-only root filesystem", () => {
    const problems: string[] = [];
    for (const w of workloads(objects())) {
      const pod = w.pod.securityContext ?? {};
      const where = `${w.kind}/${w.name}`;
      if (pod.runAsNonRoot !== true) problems.push(`${where}: runAsNonRoot is not true`);
      if (typeof pod.runAsUser !== "number" || pod.runAsUser === 0) problems.push(`${where}: runAsUser is not a non-zero uid`);
      if ((pod.seccompProfile as { type?: string } | undefined)?.type !== "RuntimeDefault") problems.push(`${where}: seccomp profile is not RuntimeDefault`);
      for (const c of allContainers(w)) {
        const at = `${where} container ${c.name}`;
        if (!isPinnedImage(c.image)) problems.push(`${at}: image ${c.image} is not pinned`);
        for (const kind of ["requests", "limits"] as const) {
          for (const resource of ["cpu", "memory"]) if (!c.resources?.[kind]?.[resource]) problems.push(`${at}: no ${resource} ${kind}`);
        }
        const security = c.securityContext ?? {};
        if (security.readOnlyRootFilesystem !== true) problems.push(`${at}: root filesystem is writable`);
        if (security.allowPrivilegeEscalation !== false) problems.push(`${at}: privilege escalation is allowed`);
        if (!security.capabilities?.drop?.includes("ALL")) problems.push(`${at}: capabilities are not all dropped`);
        if (security.runAsUser === 0 || security.privileged === true) problems.push(`${at}: runs as root or privileged`);
      }
    }
    expect(problems).toEqual([]);
  });

  test("every long-running container has startup, readiness and liveness probes", () => {
    const missing = workloads(objects())
      .filter((w) => w.kind !== "Job")
      .flatMap((w) =>
        w.pod.containers.flatMap((c) =>
          (["startupProbe", "readinessProbe", "livenessProbe"] as const).filter((probe) => !c[probe]).map((probe) => `${w.kind}/${w.name} ${c.name}: no ${probe}`),
        ),
      );
    expect(missing).toEqual([]);
  });

  test("each of the four services: grpc.health.v1 probes, Service ports grpc and http, its ServiceAccount, PDB and spread", () => {
    const all = objects();
    const services = serviceWorkloads(all);
    expect(services.map((w) => w.name).sort()).toEqual([...SERVICE_NAMES].sort());
    for (const w of services) {
      const ports = SERVICE_PORTS[w.name];
      const container = w.pod.containers[0]!;
      expect(container.image).toMatch(new RegExp(`^coursemesh/${w.name}:`));
      expect(container.ports).toEqual([
        { name: "grpc", containerPort: ports.grpc },
        { name: "http", containerPort: ports.http },
      ]);
      for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"] as const) expect(container[probe]?.grpc?.port).toBe(ports.grpc);

      const service = named(all, "Service", w.name) as { spec: { selector: Record<string, string>; ports: { name: string; port: number; targetPort: string }[] } } & K8sObject;
      expect(service.spec.ports.map(({ name, port, targetPort }) => ({ name, port, targetPort }))).toEqual([
        { name: "grpc", port: ports.grpc, targetPort: "grpc" },
        { name: "http", port: ports.http, targetPort: "http" },
      ]);
      expect(selects(service.spec.selector, w.podLabels)).toBe(true);

      expect(w.pod.serviceAccountName).toBe(w.name);
      expect(named(all, "ServiceAccount", w.name)).toBeDefined();
      const budgets = byKind(all, "PodDisruptionBudget").filter((pdb) =>
        selects((pdb.spec as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels, w.podLabels),
      );
      expect(budgets.length).toBe(1);
      const spread = w.pod.topologySpreadConstraints ?? [];
      expect(spread.map((s) => s.topologyKey).sort()).toEqual(["kubernetes.io/hostname", "topology.kubernetes.io/zone"]);
      for (const constraint of spread) expect(selects(constraint.labelSelector?.matchLabels, w.podLabels)).toBe(true);
    }
  });

  test("each service and the dashboard have a writable /tmp, and the scraper a memory-backed /dev/shm for Chromium", () => {
    for (const w of processWorkloads(objects())) {
      const mounts = new Map((w.pod.containers[0]!.volumeMounts ?? []).map((m) => [m.mountPath, m.name]));
      const volume = (path: string) => w.pod.volumes?.find((v) => v.name === mounts.get(path));
      expect(volume("/tmp")?.emptyDir).toBeDefined();
      if (w.name === "scraper") expect(volume("/dev/shm")?.emptyDir?.medium).toBe("Memory");
    }
  });

  test("terminationGracePeriodSeconds outlasts SHUTDOWN_TIMEOUT_MS with room to spare", () => {
    for (const w of processWorkloads(objects())) {
      const env = containerEnv(w.pod.containers[0]!, objects());
      const shutdownMs = Number(env.get("SHUTDOWN_TIMEOUT_MS")?.value ?? CONFIG_REGISTRY.SHUTDOWN_TIMEOUT_MS.default(w.name));
      expect((w.pod.terminationGracePeriodSeconds ?? 30) * 1000).toBeGreaterThanOrEqual(shutdownMs + 5000);
    }
  });

  test("the web dashboard: HTTP probes on its one port, Services for people and for Prometheus, its ServiceAccount, PDB and spread", () => {
    const all = objects();
    const web = processWorkloads(all).find((w) => w.name === "web");
    expect(web).toBeDefined();
    const container = web!.pod.containers[0]!;
    const port = SERVICE_PORTS.web.http;
    expect(container.image).toMatch(/^coursemesh\/web:/);
    expect(container.ports).toEqual([{ name: "http", containerPort: port }]);
    const probeTarget = (probe: keyof Pick<Container, "startupProbe" | "readinessProbe" | "livenessProbe">) => {
      const get = container[probe]?.httpGet;
      const resolved = typeof get?.port === "string" ? container.ports?.find((p) => p.name === get.port)?.containerPort : get?.port;
      return `${resolved}${get?.path}`;
    };
    // Alive while the process answers; ready only until a shutdown begins (tests/deploy/web.test.ts
    // checks these paths on the running dashboard).
    expect(probeTarget("startupProbe")).toBe(`${port}/healthz`);
    expect(probeTarget("livenessProbe")).toBe(`${port}/healthz`);
    expect(probeTarget("readinessProbe")).toBe(`${port}/readyz`);

    for (const name of ["web", "web-pods"]) {
      const service = named(all, "Service", name) as { spec: { clusterIP?: string; selector: Record<string, string>; ports: { name: string; port: number; targetPort: string }[] } } & K8sObject;
      expect(service.spec.ports.map(({ name, port, targetPort }) => ({ name, port, targetPort }))).toEqual([{ name: "http", port, targetPort: "http" }]);
      expect(selects(service.spec.selector, web!.podLabels)).toBe(true);
      if (name === "web-pods") expect(service.spec.clusterIP).toBe("None");
    }
    expect(web!.pod.serviceAccountName).toBe("web");
    expect(named(all, "ServiceAccount", "web")).toBeDefined();
    const budgets = byKind(all, "PodDisruptionBudget").filter((pdb) =>
      selects((pdb.spec as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels, web!.podLabels),
    );
    expect(budgets.length).toBe(1);
    expect((web!.pod.topologySpreadConstraints ?? []).map((s) => s.topologyKey).sort()).toEqual(["kubernetes.io/hostname", "topology.kubernetes.io/zone"]);
    // No database, so no migrations, and not labelled as a service: the Postgres and NATS policies pass it by.
    expect(workloads(all).some((w) => w.name === "web-migrate")).toBe(false);
    expect(web!.podLabels["app.kubernetes.io/component"]).toBe("frontend");
  });

  test("each service has a migration Job: same image, --migrate-only, same configuration", () => {
    const all = objects();
    for (const w of serviceWorkloads(all)) {
      const job = workloads(all).find((j) => j.kind === "Job" && j.name === `${w.name}-migrate`);
      expect(job).toBeDefined();
      const migrate = job!.pod.containers[0]!;
      const service = w.pod.containers[0]!;
      expect(migrate.image).toBe(service.image);
      expect(migrate.args).toEqual(["--migrate-only"]);
      expect(migrate.command).toBeUndefined();
      expect(migrate.env).toEqual(service.env);
      expect(migrate.envFrom).toEqual(service.envFrom);
      expect(serviceOf(job!)).toBe(w.name);
    }
  });

  test("the environment of every service and Job matches the configuration registry, and the service would start with it", () => {
    const all = objects();
    // Production's Secret is created by hand; the dev overlay's values stand in for it here.
    const devSecrets = new Map(
      workloads(render("k8s/overlays/dev")).flatMap((w) =>
        serviceOf(w) ? [...containerEnv(w.pod.containers[0]!, render("k8s/overlays/dev"))].filter(([, e]) => e.source === "secret") : [],
      ),
    );
    for (const w of workloads(all)) {
      const service = serviceOf(w);
      if (!service) continue;
      const env = containerEnv(w.pod.containers[0]!, all);
      expect({ workload: `${w.kind}/${w.name}`, problems: registryProblems(service, env) }).toEqual({ workload: `${w.kind}/${w.name}`, problems: [] });
      const values = Object.fromEntries([...env].map(([name, entry]) => [name, entry.value ?? devSecrets.get(name)?.value]));
      expect(() => loadConfig(service, values)).not.toThrow();
    }
  });

  test("Secrets come only from Secret objects, and every referenced ConfigMap and Secret exists", () => {
    const all = objects();
    const problems: string[] = [];
    const secretNames = new Set(byKind(all, "Secret").map((s) => s.metadata.name));
    const configMapNames = new Set(byKind(all, "ConfigMap").map((c) => c.metadata.name));
    const secretExists = (name: string) => secretNames.has(name) || (!overlay.endsWith("dev") && HAND_MADE_SECRETS.has(name));
    for (const w of workloads(all)) {
      for (const c of allContainers(w)) {
        for (const source of c.envFrom ?? []) {
          if (source.configMapRef && !configMapNames.has(source.configMapRef.name)) problems.push(`${w.name}: ConfigMap ${source.configMapRef.name} missing`);
          if (source.secretRef && !secretExists(source.secretRef.name)) problems.push(`${w.name}: Secret ${source.secretRef.name} missing`);
        }
        for (const entry of c.env ?? []) {
          const configMap = entry.valueFrom?.configMapKeyRef?.name;
          const secret = entry.valueFrom?.secretKeyRef?.name;
          if (configMap && !configMapNames.has(configMap)) problems.push(`${w.name}: ConfigMap ${configMap} missing`);
          if (secret && !secretExists(secret)) problems.push(`${w.name}: Secret ${secret} missing`);
        }
      }
      for (const volume of w.pod.volumes ?? []) {
        if (volume.configMap && !configMapNames.has(volume.configMap.name)) problems.push(`${w.name}: ConfigMap volume ${volume.configMap.name} missing`);
        if (volume.secret && !secretExists(volume.secret.secretName)) problems.push(`${w.name}: Secret volume ${volume.secret.secretName} missing`);
      }
    }
    expect(problems).toEqual([]);
  });

  test("every Service selects pods of the render and targets ports they declare", () => {
    const all = objects();
    const pods = workloads(all);
    for (const service of byKind(all, "Service")) {
      const spec = service.spec as { selector: Record<string, string>; ports: { name: string; targetPort: string | number }[] };
      const targets = pods.filter((w) => selects(spec.selector, w.podLabels));
      expect({ service: service.metadata.name, selected: targets.length > 0 }).toEqual({ service: service.metadata.name, selected: true });
      for (const port of spec.ports) {
        const declared = targets.some((w) => w.pod.containers.some((c) => c.ports?.some((p) => p.name === port.targetPort || p.containerPort === port.targetPort)));
        expect({ service: service.metadata.name, port: port.name, declared }).toEqual({ service: service.metadata.name, port: port.name, declared: true });
      }
    }
  });

  test("NATS is a JetStream server of a pinned 2.9+ release", () => {
    const nats = workloads(objects()).find((w) => w.name === "nats" && w.kind === "StatefulSet");
    const image = nats!.pod.containers[0]!.image;
    const [, major, minor] = /^nats:(\d+)\.(\d+)\.\d+(-[a-z0-9.]+)?$/.exec(image) ?? [];
    expect(Number(major) * 100 + Number(minor)).toBeGreaterThanOrEqual(209);
    const config = named(objects(), "ConfigMap", nats!.pod.volumes!.find((v) => v.configMap)!.configMap!.name) as { data: Record<string, string> } & K8sObject;
    expect(config.data["nats.conf"]).toContain("jetstream {");
    const routes = [...(config.data["cluster.conf"] ?? "").matchAll(/nats:\/\/nats-(\d+)\.nats-headless:6222/g)].map((m) => Number(m[1]));
    const replicas = nats!.replicas ?? 1;
    // A cluster lists every server as a route; a single server lists none.
    expect(routes).toEqual(replicas > 1 ? [...Array(replicas).keys()] : []);
  });
});

describe("dev overlay", () => {
  const objects = () => render("k8s/overlays/dev");

  test("everything runs in the cluster with one replica: Postgres, NATS, observability, a mail catcher and the demo registrar", () => {
    const names = workloads(objects()).filter((w) => w.kind !== "Job");
    expect(names.map((w) => `${w.kind}/${w.name}`).sort()).toEqual(
      [
        "Deployment/allocator",
        "Deployment/demo-registrar",
        "Deployment/grafana",
        "Deployment/ingest",
        "Deployment/mailpit",
        "Deployment/notifier",
        "Deployment/otel-collector",
        "Deployment/prometheus",
        "Deployment/scraper",
        "Deployment/tempo",
        "Deployment/web",
        "StatefulSet/nats",
        "StatefulSet/postgres",
      ].sort(),
    );
    for (const w of names) expect({ workload: w.name, replicas: w.replicas ?? 1 }).toEqual({ workload: w.name, replicas: 1 });
  });

  test("the dev secrets are generated, and the in-cluster database URL matches the Postgres password", () => {
    const secrets = byKind(objects(), "Secret");
    expect(secrets.map((s) => baseName(s.metadata.name)).sort()).toEqual(["coursemesh-secrets", "grafana", "postgres"]);
    const scraper = serviceWorkloads(objects()).find((w) => w.name === "scraper")!;
    const databaseUrl = new URL(containerEnv(scraper.pod.containers[0]!, objects()).get("DATABASE_URL")!.value!);
    const postgres = workloads(objects()).find((w) => w.name === "postgres")!;
    const password = containerEnv(postgres.pod.containers[0]!, objects()).get("POSTGRES_PASSWORD")!.value;
    expect(databaseUrl.password).toBe(password!);
    expect(databaseUrl.hostname).toBe("postgres");
  });

  test("the scraper may reach the demo registrar, which listens on every interface", () => {
    const all = objects();
    const scraper = serviceWorkloads(all).find((w) => w.name === "scraper")!;
    expect(containerEnv(scraper.pod.containers[0]!, all).get("SCRAPER_ALLOWED_HOSTS")?.value).toBe("demo-registrar:8090");
    const registrar = workloads(all).find((w) => w.name === "demo-registrar")!;
    const env = containerEnv(registrar.pod.containers[0]!, all);
    expect(env.get("DEMO_REGISTRAR_HOST")?.value).toBe("0.0.0.0");
    expect(registrar.pod.containers[0]!.ports?.[0]?.containerPort).toBe(Number(env.get("DEMO_REGISTRAR_PORT")?.value));
  });
});

describe("prod overlay", () => {
  const objects = () => render("k8s/overlays/prod");

  test("no Postgres in the cluster and no Secret in the manifests", () => {
    expect(workloads(objects()).some((w) => w.name === "postgres")).toBe(false);
    expect(byKind(objects(), "Secret")).toEqual([]);
  });

  test("every service and the dashboard run at least two replicas; the scraper, allocator and ingest autoscale", () => {
    const autoscalers = byKind(objects(), "HorizontalPodAutoscaler") as (K8sObject & {
      spec: { scaleTargetRef: { kind: string; name: string }; minReplicas: number; maxReplicas: number };
    })[];
    expect(autoscalers.map((hpa) => hpa.spec.scaleTargetRef.name).sort()).toEqual(["allocator", "ingest", "scraper"]);
    for (const w of processWorkloads(objects())) {
      const hpa = autoscalers.find((a) => a.spec.scaleTargetRef.kind === "Deployment" && a.spec.scaleTargetRef.name === w.name);
      if (hpa) {
        expect(hpa.spec.minReplicas).toBeGreaterThanOrEqual(2);
        expect(hpa.spec.maxReplicas).toBeGreaterThan(hpa.spec.minReplicas);
        // The autoscaler owns the count: a replicas field would reset it on every apply.
        expect(w.replicas).toBeUndefined();
      } else {
        expect(w.replicas ?? 1).toBeGreaterThanOrEqual(2);
      }
    }
  });

  test("the dashboard is served over https only: a Secure cookie, and an Ingress with TLS in front of the web Service", () => {
    const all = objects();
    const web = processWorkloads(all).find((w) => w.name === "web")!;
    expect(containerEnv(web.pod.containers[0]!, all).get("WEB_COOKIE_SECURE")?.value).toBe("true");
    const ingresses = byKind(all, "Ingress") as (K8sObject & {
      spec: {
        tls?: { hosts?: string[]; secretName?: string }[];
        rules: { host?: string; http: { paths: { path: string; backend: { service: { name: string; port: { name?: string; number?: number } } } }[] } }[];
      };
    })[];
    expect(ingresses.map((i) => i.metadata.name)).toEqual(["web"]);
    const [ingress] = ingresses;
    const tlsHosts = (ingress!.spec.tls ?? []).flatMap((entry) => (entry.secretName ? entry.hosts ?? [] : []));
    for (const rule of ingress!.spec.rules) {
      expect(tlsHosts).toContain(rule.host!);
      for (const path of rule.http.paths) expect(path.backend.service).toEqual({ name: "web", port: { name: "http" } });
    }
  });

  test("the README's commands create every key and Secret the overlay refers to", () => {
    const readme = readFileSync(join(REPO_ROOT, "README.md"), "utf8");
    const created = new Map<string, Set<string>>();
    for (const [command, name] of readme.matchAll(/kubectl -n coursemesh create secret (?:generic|tls) ([a-z0-9-]+)(?:[^\n]*\\\n)*[^\n]*/g)) {
      const keys = [...command.matchAll(/--from-literal=([A-Za-z0-9_.-]+)=/g)].map((m) => m[1]!);
      if (command.includes("create secret tls")) keys.push("tls.crt", "tls.key");
      created.set(name!, new Set(keys));
    }
    const referenced = new Map<string, Set<string>>();
    const refer = (name: string, key: string) => referenced.set(name, (referenced.get(name) ?? new Set()).add(key));
    for (const w of workloads(objects())) {
      for (const c of allContainers(w)) for (const entry of c.env ?? []) if (entry.valueFrom?.secretKeyRef) refer(entry.valueFrom.secretKeyRef.name!, entry.valueFrom.secretKeyRef.key!);
    }
    for (const ingress of byKind(objects(), "Ingress")) {
      for (const tls of (ingress.spec as { tls?: { secretName?: string }[] }).tls ?? []) if (tls.secretName) for (const key of ["tls.crt", "tls.key"]) refer(tls.secretName, key);
    }
    const missing = [...referenced].flatMap(([name, keys]) => [...keys].filter((key) => !created.get(name)?.has(key)).map((key) => `${name}/${key}`));
    expect(missing).toEqual([]);
  });

  test("NATS runs three JetStream servers and streams keep three copies", () => {
    const nats = workloads(objects()).find((w) => w.name === "nats")!;
    expect(nats.replicas).toBe(3);
    const scraper = serviceWorkloads(objects()).find((w) => w.name === "scraper")!;
    expect(containerEnv(scraper.pod.containers[0]!, objects()).get("EVENTS_STREAM_REPLICAS")?.value).toBe("3");
  });
});

test("k8s/ commits no Secret and never sets AUTH_DISABLED", () => {
  for (const file of filesUnder("k8s")) {
    const text = readFileSync(join(REPO_ROOT, file), "utf8");
    expect({ file, authDisabled: /AUTH_DISABLED/.test(text) }).toEqual({ file, authDisabled: false });
    expect({ file, secretObject: /^kind:\s*Secret\s*$/m.test(text) }).toEqual({ file, secretObject: false });
  }
});
