/**
 * The web dashboard as compose and Kubernetes run it: every path their probes, health check and
 * Prometheus ask for answers on the running dashboard, and everything the dashboard reads from its
 * environment is declared in the configuration registry for it. Starts one web process on a free
 * port (no database or NATS: the dashboard has neither).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { CONFIG_REGISTRY, readsVariable, type ConfigName } from "../../services/shared/src/config.ts";
import { startServiceProcess, type ServiceProcess } from "../../services/shared/src/testing/harness.ts";
import { envReadBy, filesUnder, readYaml, render, workloads, type Container } from "./support.ts";

let web: ServiceProcess;

beforeAll(async () => {
  for (const overlay of ["dev", "prod"]) render(`k8s/overlays/${overlay}`);
  web = await startServiceProcess("web", { env: { WEB_SESSION_SECRET: "deploy-test-web-session-secret-0123456789abcdef" }, timeoutMs: 30_000 });
}, 60_000);

afterAll(async () => {
  await web?.stop();
});

/** The HTTP paths a deployment asks the dashboard for: Kubernetes probes, compose's health check, Prometheus. */
function deployedPaths(): string[] {
  const paths = new Set<string>(["/metrics"]);
  for (const overlay of ["k8s/overlays/dev", "k8s/overlays/prod"]) {
    const deployment = workloads(render(overlay)).find((w) => w.kind === "Deployment" && w.name === "web")!;
    const container: Container = deployment.pod.containers[0]!;
    for (const probe of [container.startupProbe, container.readinessProbe, container.livenessProbe]) {
      if (probe?.httpGet?.path) paths.add(probe.httpGet.path);
    }
  }
  const compose = readYaml<{ services: Record<string, { healthcheck?: { test: string[] } }> }>("deploy/compose.yaml");
  for (const match of JSON.stringify(compose.services.web!.healthcheck!.test).matchAll(/http:\/\/127\.0\.0\.1:\d+(\/[a-z]+)/g)) paths.add(match[1]!);
  return [...paths].sort();
}

test("every path the probes, the compose health check and Prometheus use answers 200 on the running dashboard", async () => {
  const paths = deployedPaths();
  expect(paths).toEqual(["/healthz", "/metrics", "/readyz"]);
  const answers = await Promise.all(
    paths.map(async (path) => {
      const response = await fetch(`${web.httpUrl}${path}`, { redirect: "manual", signal: AbortSignal.timeout(5000) });
      await response.arrayBuffer();
      return { path, status: response.status };
    }),
  );
  expect(answers).toEqual(paths.map((path) => ({ path, status: 200 })));
});

test("/metrics is Prometheus text that names the dashboard, as the scrape job expects", async () => {
  const response = await fetch(`${web.httpUrl}/metrics`, { signal: AbortSignal.timeout(5000) });
  expect(response.headers.get("content-type") ?? "").toStartWith("text/plain");
  const text = await response.text();
  expect(text).toMatch(/^# TYPE \S+ (counter|gauge|histogram|summary)$/m);
  expect(text).toContain('service="web"');
});

test("every environment variable the dashboard's code reads is in the configuration registry, with web as a reader", () => {
  const read = filesUnder("services/web/src")
    .filter((file) => file.endsWith(".ts"))
    .flatMap((file) => [...envReadBy(file)].map((name) => ({ file, name })));
  const problems = read
    .filter(({ name }) => !(name in CONFIG_REGISTRY) || !readsVariable("web", name as ConfigName))
    .map(({ file, name }) => `${file} reads ${name}, which the registry does not give to web`);
  expect(problems).toEqual([]);
});
