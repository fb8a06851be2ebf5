/**
 * deploy/'s observability: the Grafana data sources, their trace ↔ metrics links and the
 * "coursemesh overview" dashboard refer only to data sources that exist and to metrics the services
 * really export (the four services and the web dashboard are started here and their /metrics
 * read), and the collector, Tempo and Prometheus configurations agree with the compose stack and
 * the Kubernetes manifests.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parser } from "@prometheus-io/lezer-promql";
import { PROCESS_NAMES, SERVICE_PORTS } from "../../services/shared/src/config.ts";
import {
  createTestDatabase,
  removeNatsPrefix,
  startServiceProcess,
  testNatsPrefix,
  type ServiceProcess,
  type TestDatabase,
} from "../../services/shared/src/testing/harness.ts";
import { containerEnv, readYaml, render, REPO_ROOT, workloads, type K8sObject } from "./support.ts";

interface Datasource {
  name: string;
  type: string;
  uid: string;
  url: string;
  jsonData?: {
    exemplarTraceIdDestinations?: { name: string; datasourceUid: string }[];
    tracesToMetrics?: { datasourceUid: string; tags?: { key: string; value: string }[]; queries?: { name: string; query: string }[] };
    serviceMap?: { datasourceUid: string };
  };
}
interface Panel {
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  targets?: { refId: string; expr?: string; datasource?: { uid: string } }[];
  panels?: Panel[];
}
interface ComposeService {
  command?: string[];
  volumes?: string[];
  networks?: Record<string, { aliases?: string[] }>;
  environment?: Record<string, string>;
}

const datasources = readYaml<{ datasources: Datasource[] }>("deploy/grafana/provisioning/datasources/datasources.yaml").datasources;
const dashboard = JSON.parse(readFileSync(join(REPO_ROOT, "deploy/grafana/dashboards/coursemesh-overview.json"), "utf8")) as {
  uid: string;
  title: string;
  panels: Panel[];
};
const compose = readYaml<{ services: Record<string, ComposeService> }>("deploy/compose.yaml");
const collector = readYaml<{
  extensions?: Record<string, unknown>;
  receivers: Record<string, { protocols?: Record<string, { endpoint: string }> }>;
  processors?: Record<string, unknown>;
  exporters: Record<string, { endpoint?: string }>;
  service: { extensions?: string[]; pipelines: Record<string, { receivers: string[]; processors?: string[]; exporters: string[] }> };
}>("deploy/otel-collector/config.yaml");
const tempo = readYaml<{
  server: { http_listen_port: number };
  distributor: { receivers: { otlp: { protocols: Record<string, { endpoint: string }> } } };
  metrics_generator: { storage: { path: string; remote_write: { url: string }[] } };
  storage: { trace: { wal: { path: string }; local: { path: string } } };
}>("deploy/tempo/tempo.yaml");
const prometheus = readYaml<{ scrape_configs: { job_name: string; dns_sd_configs?: { names: string[]; type: string; port: number }[] }[] }>(
  "deploy/prometheus/prometheus.yml",
);
const allPanels = (panels: Panel[]): Panel[] => panels.flatMap((panel) => [panel, ...allPanels(panel.panels ?? [])]);
const k8sOverlays = () => ["k8s/overlays/dev", "k8s/overlays/prod"].map((overlay) => render(overlay));
const k8sService = (objects: K8sObject[], name: string) =>
  objects.find((o) => o.kind === "Service" && o.metadata.name === name) as
    | (K8sObject & { spec: { clusterIP?: string; ports: { name: string; port: number }[] } })
    | undefined;
const hostPort = (endpoint: string) => endpoint.replace(/^[a-z]+:\/\//, "").replace(/\/.*$/, "");

// ---- The metrics the services export ----------------------------------------------------------

let database: TestDatabase;
const natsPrefix = testNatsPrefix();
const running: ServiceProcess[] = [];
/** Every series name the services' and the dashboard's /metrics expose (histograms with _bucket, _sum, _count). */
const exported = new Set<string>();
/** Labels present on every series of every service. */
let commonLabels = new Set<string>();

beforeAll(async () => {
  for (const objects of k8sOverlays()) expect(objects.length).toBeGreaterThan(0);
  database = await createTestDatabase();
  // Small buckets: this test only reads /metrics. The dashboard ignores what it does not read.
  const env = {
    DATABASE_URL: database.url,
    NATS_PREFIX: natsPrefix,
    INGEST_DOCUMENTS_MAX_BYTES: String(8 * 1024 * 1024),
    WEB_SESSION_SECRET: "observability-test-session-secret-0123456789abcdef",
  };
  const started = await Promise.allSettled(PROCESS_NAMES.map((service) => startServiceProcess(service, { env, timeoutMs: 45_000 })));
  for (const result of started) if (result.status === "fulfilled") running.push(result.value);
  const failed = started.find((result) => result.status === "rejected");
  if (failed) throw (failed as PromiseRejectedResult).reason;
  for (const service of running) {
    const text = await (await fetch(`${service.httpUrl}/metrics`)).text();
    const labelsHere = new Set<string>();
    let first = true;
    for (const line of text.split("\n")) {
      const type = /^# TYPE (\S+) (\S+)/.exec(line);
      if (type) {
        const [, name, kind] = type;
        exported.add(name!);
        if (kind === "histogram") for (const suffix of ["_bucket", "_sum", "_count"]) exported.add(name! + suffix);
        if (kind === "summary") for (const suffix of ["_sum", "_count"]) exported.add(name! + suffix);
        continue;
      }
      const sample = /^[a-zA-Z_:][a-zA-Z0-9_:]*\{([^}]*)\}/.exec(line);
      if (!sample) continue;
      const names = new Set([...sample[1]!.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="/g)].map((m) => m[1]!));
      if (first) for (const name of names) labelsHere.add(name);
      else for (const name of [...labelsHere]) if (!names.has(name)) labelsHere.delete(name);
      first = false;
    }
    commonLabels = commonLabels.size === 0 ? labelsHere : new Set([...commonLabels].filter((label) => labelsHere.has(label)));
  }
}, 90_000);

afterAll(async () => {
  await Promise.all(running.map((service) => service.stop()));
  await removeNatsPrefix(natsPrefix);
  await database?.drop();
}, 60_000);

/** Metric names a PromQL expression selects, after Grafana's variables are given sample values. */
function metricsIn(expression: string): string[] {
  const query = expression
    .replaceAll("$$", "$")
    .replaceAll("$__tags", 'service="scraper"')
    .replace(/\$__(rate_interval|interval|range)/g, "5m");
  const tree = parser.parse(query);
  const names: string[] = [];
  let broken = false;
  tree.iterate({
    enter(node) {
      if (node.type.isError) broken = true;
      if (node.name === "VectorSelector") {
        const identifier = node.node.getChild("Identifier");
        if (identifier) names.push(query.slice(identifier.from, identifier.to));
      }
    },
  });
  if (broken) throw new Error(`not valid PromQL: ${query}`);
  return names;
}

describe("Grafana", () => {
  const uids = new Set(datasources.map((d) => d.uid));

  test("the Prometheus and Tempo data sources have fixed, unique uids and point at the stack's own services", () => {
    expect(datasources.map((d) => [d.type, d.uid])).toEqual([
      ["prometheus", "prometheus"],
      ["tempo", "tempo"],
    ]);
    expect(uids.size).toBe(datasources.length);
    for (const source of datasources) {
      const [host, port] = hostPort(source.url).split(":");
      expect(compose.services[host!]).toBeDefined();
      for (const objects of k8sOverlays()) expect(k8sService(objects, host!)?.spec.ports.map((p) => p.port)).toContain(Number(port));
    }
  });

  test("traces link to metrics and metrics to traces through data sources that exist", () => {
    const tempoSource = datasources.find((d) => d.type === "tempo")!;
    const prometheusSource = datasources.find((d) => d.type === "prometheus")!;
    expect(uids).toContain(tempoSource.jsonData!.tracesToMetrics!.datasourceUid);
    expect(uids).toContain(tempoSource.jsonData!.serviceMap!.datasourceUid);
    const exemplars = prometheusSource.jsonData!.exemplarTraceIdDestinations!;
    expect(exemplars.length).toBeGreaterThan(0);
    for (const destination of exemplars) expect(destination.datasourceUid).toBe(tempoSource.uid);
  });

  test("the traces-to-metrics queries are valid PromQL over exported metrics, keyed by a label every series has", () => {
    const links = datasources.find((d) => d.type === "tempo")!.jsonData!.tracesToMetrics!;
    for (const tag of links.tags ?? []) expect(commonLabels).toContain(tag.value);
    for (const { query } of links.queries ?? []) {
      const metrics = metricsIn(query);
      expect(metrics.length).toBeGreaterThan(0);
      for (const metric of metrics) expect({ query, metric, exported: exported.has(metric) }).toEqual({ query, metric, exported: true });
    }
  });

  test("the coursemesh overview dashboard has the panels operators look for", () => {
    expect(dashboard.uid).toBe("coursemesh-overview");
    expect(dashboard.title).toBe("coursemesh overview");
    const titles = allPanels(dashboard.panels).map((p) => p.title);
    const wantedTitles = [
      "Enrollment decisions/s",
      "Queue depth",
      "Seats taken vs capacity",
      "Checks/s",
      "Monitors by health",
      "Deliveries sent/failed",
      "Jobs by status",
      "Dashboard requests/s",
      "Live streams",
    ];
    for (const wanted of wantedTitles) {
      expect(titles).toContain(wanted);
    }
  });

  test("every panel queries a data source that exists, with valid PromQL over metrics the services export", () => {
    const problems: string[] = [];
    for (const panel of allPanels(dashboard.panels).filter((p) => p.type !== "row")) {
      if (!panel.datasource || !uids.has(panel.datasource.uid)) problems.push(`${panel.title}: unknown data source ${panel.datasource?.uid}`);
      if (!panel.targets?.length) problems.push(`${panel.title}: no queries`);
      for (const target of panel.targets ?? []) {
        if (target.datasource && !uids.has(target.datasource.uid)) problems.push(`${panel.title} ${target.refId}: unknown data source ${target.datasource.uid}`);
        let metrics: string[] = [];
        try {
          metrics = metricsIn(target.expr ?? "");
        } catch (error) {
          problems.push(`${panel.title} ${target.refId}: ${(error as Error).message}`);
        }
        if (metrics.length === 0) problems.push(`${panel.title} ${target.refId}: selects no metric`);
        for (const metric of metrics) if (!exported.has(metric)) problems.push(`${panel.title} ${target.refId}: ${metric} is not exported by any service`);
      }
    }
    expect(problems).toEqual([]);
  });

  test("compose and Kubernetes mount the provisioning and the dashboards where the provider looks", () => {
    const provider = readYaml<{ providers: { options: { path: string } }[] }>("deploy/grafana/provisioning/dashboards/dashboards.yaml").providers[0]!;
    const composeMounts = (compose.services.grafana!.volumes ?? []).map((v) => v.split(":"));
    expect(composeMounts).toContainEqual(["./grafana/dashboards", provider.options.path, "ro"]);
    expect(composeMounts).toContainEqual(["./grafana/provisioning", "/etc/grafana/provisioning", "ro"]);
    for (const objects of k8sOverlays()) {
      const grafana = workloads(objects).find((w) => w.name === "grafana")!;
      const mounts = grafana.pod.containers[0]!.volumeMounts!.map((m) => m.mountPath);
      for (const path of [provider.options.path, "/etc/grafana/provisioning/datasources", "/etc/grafana/provisioning/dashboards"]) expect(mounts).toContain(path);
    }
  });
});

describe("traces: services → collector → Tempo", () => {
  test("every collector pipeline uses components the configuration defines", () => {
    for (const pipeline of Object.values(collector.service.pipelines)) {
      for (const name of pipeline.receivers) expect(collector.receivers).toHaveProperty([name]);
      for (const name of pipeline.processors ?? []) expect(collector.processors ?? {}).toHaveProperty([name]);
      for (const name of pipeline.exporters) expect(collector.exporters).toHaveProperty([name]);
    }
    for (const name of collector.service.extensions ?? []) expect(collector.extensions ?? {}).toHaveProperty([name]);
  });

  test("the services and the dashboard send OTLP/HTTP to the collector's HTTP receiver, in compose and Kubernetes", () => {
    const receiverPort = Number(collector.receivers.otlp!.protocols!.http!.endpoint.split(":").at(-1));
    for (const service of PROCESS_NAMES) expect(compose.services[service]!.environment?.OTEL_EXPORTER_OTLP_ENDPOINT).toBe(`http://otel-collector:${receiverPort}`);
    for (const objects of k8sOverlays()) {
      expect(k8sService(objects, "otel-collector")!.spec.ports.map((p) => p.port)).toContain(receiverPort);
      const traced = workloads(objects).filter((w) => ["service", "frontend"].includes(w.podLabels["app.kubernetes.io/component"] ?? ""));
      expect(traced.map((w) => w.name).sort()).toEqual([...PROCESS_NAMES].sort());
      for (const w of traced) {
        expect(containerEnv(w.pod.containers[0]!, objects).get("OTEL_EXPORTER_OTLP_ENDPOINT")?.value).toBe(`http://otel-collector:${receiverPort}`);
      }
    }
  });

  test("the collector exports to Tempo's OTLP gRPC receiver, and Tempo keeps its data on a volume", () => {
    const traceExporters = collector.service.pipelines.traces!.exporters.map((name) => collector.exporters[name]!.endpoint!);
    const tempoGrpcPort = Number(tempo.distributor.receivers.otlp.protocols.grpc!.endpoint.split(":").at(-1));
    expect(traceExporters).toEqual([`tempo:${tempoGrpcPort}`]);
    for (const objects of k8sOverlays()) {
      expect(k8sService(objects, "tempo")!.spec.ports.map((p) => p.port)).toEqual(expect.arrayContaining([tempoGrpcPort, tempo.server.http_listen_port]));
      const mounts = workloads(objects).find((w) => w.name === "tempo")!.pod.containers[0]!.volumeMounts!.map((m) => m.mountPath);
      for (const path of [tempo.storage.trace.wal.path, tempo.storage.trace.local.path, tempo.metrics_generator.storage.path]) {
        expect(mounts.some((mount) => path.startsWith(`${mount}/`))).toBe(true);
      }
    }
    expect((compose.services.tempo!.volumes ?? []).some((v) => v.startsWith("tempo-data:/var/tempo"))).toBe(true);
  });
});

describe("metrics: Prometheus scrapes every replica; Tempo writes span metrics in", () => {
  test("each service and the dashboard are discovered through a <service>-pods name on their HTTP port, in compose and Kubernetes", () => {
    const discovered = prometheus.scrape_configs.flatMap((job) => job.dns_sd_configs ?? []);
    for (const service of PROCESS_NAMES) {
      const name = `${service}-pods`;
      const config = discovered.find((d) => d.names.includes(name));
      expect(config).toMatchObject({ type: "A", port: SERVICE_PORTS[service].http });
      expect(compose.services[service]!.networks?.default?.aliases).toContain(name);
      for (const objects of k8sOverlays()) {
        const headless = k8sService(objects, name);
        expect(headless?.spec.clusterIP).toBe("None");
        expect(headless?.spec.ports.map((p) => p.port)).toEqual([SERVICE_PORTS[service].http]);
      }
    }
  });

  test("Tempo's metrics-generator writes to Prometheus, which accepts remote writes and keeps exemplars", () => {
    expect(tempo.metrics_generator.storage.remote_write.map((target) => target.url)).toEqual(["http://prometheus:9090/api/v1/write"]);
    const flags = [compose.services.prometheus!.command ?? [], ...k8sOverlays().map((objects) => workloads(objects).find((w) => w.name === "prometheus")!.pod.containers[0]!.args ?? [])];
    for (const args of flags) expect(args).toEqual(expect.arrayContaining(["--web.enable-remote-write-receiver", "--enable-feature=exemplar-storage"]));
  });
});
