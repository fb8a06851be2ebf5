/**
 * A small evaluator of Kubernetes NetworkPolicy semantics (networking.k8s.io/v1), so a test can list
 * every connection a rendered overlay allows and compare it with the edges the design uses. Pure
 * functions over manifests: no packet is sent anywhere.
 */
import ipaddr from "ipaddr.js";
import { workloads, type K8sObject } from "./support.ts";

export interface PortRef {
  protocol: "TCP" | "UDP";
  port: number;
  name?: string;
}

/** Something traffic can come from or go to: a group of pods, or an address outside the cluster. */
export type Peer =
  | { kind: "pods"; name: string; namespace: string; namespaceLabels: Record<string, string>; labels: Record<string, string>; ports: PortRef[] }
  | { kind: "address"; name: string; address: string; ports: PortRef[] };

interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: { key: string; operator: "In" | "NotIn" | "Exists" | "DoesNotExist"; values?: string[] }[];
}
interface PolicyPeer {
  podSelector?: LabelSelector;
  namespaceSelector?: LabelSelector;
  ipBlock?: { cidr: string; except?: string[] };
}
interface PolicyPort {
  protocol?: "TCP" | "UDP" | "SCTP";
  port?: number | string;
  endPort?: number;
}
interface Rule {
  from?: PolicyPeer[];
  to?: PolicyPeer[];
  ports?: PolicyPort[];
}
interface Policy {
  namespace: string;
  podSelector: LabelSelector;
  policyTypes: ("Ingress" | "Egress")[];
  ingress: Rule[];
  egress: Rule[];
}

/** Whether a label selector matches labels; an empty selector matches everything. */
export function selectorMatches(selector: LabelSelector, labels: Record<string, string>): boolean {
  const byLabel = Object.entries(selector.matchLabels ?? {}).every(([key, value]) => labels[key] === value);
  const byExpression = (selector.matchExpressions ?? []).every(({ key, operator, values = [] }) => {
    switch (operator) {
      case "In":
        return key in labels && values.includes(labels[key]!);
      case "NotIn":
        return !(key in labels) || !values.includes(labels[key]!);
      case "Exists":
        return key in labels;
      case "DoesNotExist":
        return !(key in labels);
    }
  });
  return byLabel && byExpression;
}

const cidrMatches = new Map<string, boolean>();

/** Whether an address is inside a CIDR (never across IPv4 and IPv6). */
export function inCidr(address: string, cidr: string): boolean {
  const key = `${address} ${cidr}`;
  let matches = cidrMatches.get(key);
  if (matches === undefined) {
    const parsed = ipaddr.parse(address);
    const [range, bits] = ipaddr.parseCIDR(cidr);
    matches = parsed.kind() === range.kind() && parsed.match(range, bits);
    cidrMatches.set(key, matches);
  }
  return matches;
}

function policiesOf(objects: K8sObject[]): Policy[] {
  return objects
    .filter((object) => object.kind === "NetworkPolicy")
    .map((object) => {
      const spec = object.spec as { podSelector: LabelSelector; policyTypes?: Policy["policyTypes"]; ingress?: Rule[]; egress?: Rule[] };
      const policyTypes = spec.policyTypes ?? (spec.egress ? ["Ingress", "Egress"] : ["Ingress"]);
      return { namespace: object.metadata.namespace ?? "default", podSelector: spec.podSelector, policyTypes, ingress: spec.ingress ?? [], egress: spec.egress ?? [] };
    });
}

function peerMatches(entry: PolicyPeer, policyNamespace: string, peer: Peer): boolean {
  if (entry.ipBlock) {
    if (peer.kind !== "address") return false;
    const { cidr, except = [] } = entry.ipBlock;
    return inCidr(peer.address, cidr) && !except.some((excluded) => inCidr(peer.address, excluded));
  }
  if (peer.kind !== "pods") return false;
  const namespaceOk = entry.namespaceSelector ? selectorMatches(entry.namespaceSelector, peer.namespaceLabels) : peer.namespace === policyNamespace;
  return namespaceOk && (entry.podSelector ? selectorMatches(entry.podSelector, peer.labels) : true);
}

function portMatches(ports: PolicyPort[] | undefined, port: PortRef): boolean {
  if (!ports || ports.length === 0) return true;
  return ports.some((rule) => {
    if ((rule.protocol ?? "TCP") !== port.protocol) return false;
    if (rule.port === undefined) return true;
    // A named port in a rule means the destination pod's container port of that name.
    if (typeof rule.port === "string") return rule.port === port.name;
    return rule.endPort !== undefined ? port.port >= rule.port && port.port <= rule.endPort : port.port === rule.port;
  });
}

function allowedBy(policies: Policy[], direction: "Ingress" | "Egress", subject: Peer, other: Peer, port: PortRef): boolean {
  // Addresses outside the cluster, and pods of namespaces without policies, are not isolated.
  if (subject.kind !== "pods") return true;
  const selecting = policies.filter(
    (policy) => policy.namespace === subject.namespace && policy.policyTypes.includes(direction) && selectorMatches(policy.podSelector, subject.labels),
  );
  if (selecting.length === 0) return true;
  return selecting.some((policy) =>
    (direction === "Ingress" ? policy.ingress : policy.egress).some((rule) => {
      const peers = direction === "Ingress" ? rule.from : rule.to;
      const peerOk = !peers || peers.length === 0 || peers.some((entry) => peerMatches(entry, policy.namespace, other));
      return peerOk && portMatches(rule.ports, port);
    }),
  );
}

/** Pod groups of a render (one per workload, in its namespace). */
export function podPeers(objects: K8sObject[], namespaceLabels: (namespace: string) => Record<string, string>): Peer[] {
  return workloads(objects).map((w) => {
    const namespace = w.object.metadata.namespace ?? "default";
    return {
      kind: "pods" as const,
      name: w.name,
      namespace,
      namespaceLabels: namespaceLabels(namespace),
      labels: w.podLabels,
      ports: w.pod.containers.flatMap((c) =>
        (c.ports ?? []).map((p) => ({ protocol: (p.protocol ?? "TCP") as PortRef["protocol"], port: p.containerPort, name: p.name })),
      ),
    };
  });
}

/**
 * Every connection `sources` may open to `destinations` under the render's policies, as
 * "source -> destination:PROTOCOL/port" lines: allowed by the source's egress and the destination's ingress.
 */
export function allowedEdges(objects: K8sObject[], sources: Peer[], destinations: Peer[]): string[] {
  const policies = policiesOf(objects);
  const edges: string[] = [];
  for (const source of sources) {
    for (const destination of destinations) {
      // Between two outside addresses no policy of the cluster has a say.
      if (source.kind === "address" && destination.kind === "address") continue;
      for (const port of destination.ports) {
        if (allowedBy(policies, "Egress", source, destination, port) && allowedBy(policies, "Ingress", destination, source, port)) {
          edges.push(`${source.name} -> ${destination.name}:${port.protocol}/${port.port}`);
        }
      }
    }
  }
  return edges.sort();
}
