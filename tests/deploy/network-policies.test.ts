/**
 * Network policies allow each edge coursemesh uses (DESIGN.md) and no other: every connection the
 * rendered policies allow between the workloads, the cluster DNS and addresses outside the cluster
 * is listed and compared with the design's edges. Pure evaluation of manifests; no traffic.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { SERVICE_NAMES, SERVICE_PORTS } from "../../services/shared/src/config.ts";
import { allowedEdges, inCidr, podPeers, selectorMatches, type Peer, type PortRef } from "./network-policy.ts";
import { render } from "./support.ts";

const tcp = (...ports: number[]): PortRef[] => ports.map((port) => ({ protocol: "TCP", port }));
/** Ports tried towards addresses outside the cluster: mail, web, databases, SSH, the API server. */
const OUTSIDE_PORTS: PortRef[] = [...tcp(22, 25, 53, 80, 443, 465, 587, 3306, 5432, 6443, 8080, 8443), { protocol: "UDP", port: 53 }];

const INTERNET: Peer[] = [
  { kind: "address", name: "internet", address: "203.0.113.10", ports: OUTSIDE_PORTS },
  { kind: "address", name: "internet-v6", address: "2001:db8::10", ports: OUTSIDE_PORTS },
];
/** Addresses a page or a webhook must never make the scraper or the notifier reach. */
const PRIVATE: Peer[] = [
  ["cluster-10", "10.96.0.10"],
  ["private-172", "172.20.0.5"],
  ["private-192", "192.168.1.20"],
  ["carrier-nat", "100.64.0.7"],
  ["metadata", "169.254.169.254"],
  ["loopback", "127.0.0.1"],
  ["unique-local-v6", "fd00::10"],
  ["link-local-v6", "fe80::1"],
  ["mapped-v4-in-v6", "::ffff:10.96.0.10"],
].map(([name, address]) => ({ kind: "address" as const, name: name!, address: address!, ports: OUTSIDE_PORTS }));
/** overlays/prod's external database (a documentation address standing in for the real one). */
const EXTERNAL_DATABASE: Peer = { kind: "address", name: "external-postgres", address: "192.0.2.10", ports: tcp(5432) };
const KUBE_DNS: Peer = {
  kind: "pods",
  name: "kube-dns",
  namespace: "kube-system",
  namespaceLabels: { "kubernetes.io/metadata.name": "kube-system" },
  labels: { "k8s-app": "kube-dns" },
  ports: [{ protocol: "UDP", port: 53, name: "dns" }, { protocol: "TCP", port: 53, name: "dns-tcp" }],
};

/** The design's edges for an overlay, as "source -> destination:PROTOCOL/port". */
function designEdges(pods: Peer[], overlay: "dev" | "prod"): string[] {
  const edges: string[] = [];
  const add = (source: string, destination: string, ...ports: (number | string)[]) =>
    ports.forEach((port) => edges.push(`${source} -> ${destination}:${typeof port === "number" ? `TCP/${port}` : port}`));

  // Everyone resolves names.
  for (const pod of pods) add(pod.name, "kube-dns", "UDP/53", "TCP/53");
  for (const service of SERVICE_NAMES) {
    const { grpc, http } = SERVICE_PORTS[service];
    // all → postgres (with the migration Jobs), all → nats, all → collector (OTLP/HTTP).
    for (const client of [service, `${service}-migrate`]) add(client, overlay === "dev" ? "postgres" : "external-postgres", 5432);
    add(service, "nats", 4222);
    add(service, "otel-collector", 4318);
    // Prometheus scrapes each service; clients outside call its API.
    add("prometheus", service, http);
  }
  for (const internet of ["internet", "internet-v6"]) {
    // Clients outside call every API; people open the notifier's links and upload PDFs to ingest.
    for (const service of SERVICE_NAMES) add(internet, service, SERVICE_PORTS[service].grpc);
    add(internet, "notifier", SERVICE_PORTS.notifier.http);
    add(internet, "ingest", SERVICE_PORTS.ingest.http);
    add(internet, "grafana", 3000);
    // Registration pages for the scraper; SMTP and webhooks for the notifier.
    add("scraper", internet, 80, 443);
    add("notifier", internet, 25, 465, 587, 80, 443);
  }
  // scraper → notifier (Subscribe).
  add("scraper", "notifier", SERVICE_PORTS.notifier.grpc);
  // The web dashboard: people open it (through the platform's ingress, from anywhere) and
  // Prometheus scrapes it on its one port; it calls every service's API and sends its traces.
  // No database and no NATS.
  for (const service of SERVICE_NAMES) add("web", service, SERVICE_PORTS[service].grpc);
  add("web", "otel-collector", 4318);
  add("prometheus", "web", SERVICE_PORTS.web.http);
  for (const internet of ["internet", "internet-v6"]) add(internet, "web", SERVICE_PORTS.web.http);
  // JetStream cluster routes; traces and span metrics; Grafana reads both and is opened by people.
  add("nats", "nats", 6222);
  add("otel-collector", "tempo", 4317);
  add("tempo", "prometheus", 9090);
  add("grafana", "prometheus", 9090);
  add("grafana", "tempo", 3200);
  if (overlay === "dev") {
    add("scraper", "demo-registrar", 8090);
    add("notifier", "mailpit", 1025);
  }
  return edges.sort();
}

// kustomize takes a few seconds on a busy machine.
beforeAll(() => {
  for (const overlay of ["dev", "prod"]) render(`k8s/overlays/${overlay}`);
}, 60_000);

describe.each(["dev", "prod"] as const)("overlays/%s", (overlay) => {
  test("the network policies allow each edge the design uses, and no other", () => {
    const objects = render(`k8s/overlays/${overlay}`);
    const pods = podPeers(objects, (namespace) => ({ "kubernetes.io/metadata.name": namespace }));
    const destinations = [...pods, ...INTERNET, ...PRIVATE, EXTERNAL_DATABASE];
    // The cluster DNS lives in kube-system, whose own policies are not ours: only our side counts.
    const allowed = [...allowedEdges(objects, [...pods, ...INTERNET], destinations), ...allowedEdges(objects, pods, [KUBE_DNS])].sort();
    const expected = designEdges(pods, overlay);
    expect({ unexpected: allowed.filter((e) => !expected.includes(e)), missing: expected.filter((e) => !allowed.includes(e)) }).toEqual({
      unexpected: [],
      missing: [],
    });
  });

  test("nothing in the namespace reaches private, link-local or metadata addresses", () => {
    const objects = render(`k8s/overlays/${overlay}`);
    const pods = podPeers(objects, (namespace) => ({ "kubernetes.io/metadata.name": namespace }));
    expect(allowedEdges(objects, pods, PRIVATE)).toEqual([]);
  });
});

test("the evaluator's building blocks follow the NetworkPolicy rules", () => {
  expect(selectorMatches({}, { a: "b" })).toBe(true);
  expect(selectorMatches({ matchExpressions: [{ key: "tier", operator: "In", values: ["service", "migration"] }] }, { tier: "migration" })).toBe(true);
  expect(selectorMatches({ matchExpressions: [{ key: "tier", operator: "NotIn", values: ["service"] }] }, { tier: "service" })).toBe(false);
  expect(inCidr("10.1.2.3", "10.0.0.0/8")).toBe(true);
  expect(inCidr("203.0.113.10", "0.0.0.0/0")).toBe(true);
  expect(inCidr("fd00::10", "fc00::/7")).toBe(true);
  expect(inCidr("10.1.2.3", "::/0")).toBe(false);
  // A namespace-wide deny with one allowed named port.
  const objects = [
    { apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name: "deny", namespace: "n" }, spec: { podSelector: {}, policyTypes: ["Ingress", "Egress"] } },
    {
      apiVersion: "networking.k8s.io/v1",
      kind: "NetworkPolicy",
      metadata: { name: "web", namespace: "n" },
      spec: { podSelector: { matchLabels: { app: "web" } }, policyTypes: ["Ingress"], ingress: [{ ports: [{ port: "http" }] }] },
    },
    {
      apiVersion: "networking.k8s.io/v1",
      kind: "NetworkPolicy",
      metadata: { name: "client", namespace: "n" },
      spec: { podSelector: { matchLabels: { app: "client" } }, policyTypes: ["Egress"], egress: [{ to: [{ podSelector: { matchLabels: { app: "web" } } }] }] },
    },
  ];
  const pod = (name: string): Peer => ({
    kind: "pods",
    name,
    namespace: "n",
    namespaceLabels: {},
    labels: { app: name },
    ports: [{ protocol: "TCP", port: 8080, name: "http" }, { protocol: "TCP", port: 9000, name: "admin" }],
  });
  expect(allowedEdges(objects, [pod("client"), pod("web")], [pod("client"), pod("web")])).toEqual(["client -> web:TCP/8080"]);
});
