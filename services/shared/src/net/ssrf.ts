/**
 * SSRF guard: decides whether coursemesh may connect to an address a user gave it (a monitored page,
 * a webhook URL). Only public unicast addresses pass; private, loopback, link-local, cloud metadata,
 * unique-local, IPv4-mapped/translated IPv6, multicast and reserved ranges are refused unless the
 * deployment allows private hosts (tests, a lab network). Address ranges come from ipaddr.js, which
 * tracks the IANA special-purpose registries.
 */
import { lookup } from "node:dns/promises";
import ipaddr from "ipaddr.js";

/** Why an address is or is not reachable from coursemesh. */
export type AddressClass =
  | "public"
  | "private"
  | "loopback"
  | "link-local"
  | "metadata"
  | "ipv4-mapped"
  | "unspecified"
  | "multicast"
  | "reserved"
  | "invalid";

/** Cloud instance metadata endpoints (AWS, GCP, Azure, OpenStack; AWS's IPv6 one). */
const METADATA_ADDRESSES = new Set(["169.254.169.254", "fd00:ec2::254"]);

/** Classifies one IP address literal (IPv4 dotted quad or IPv6, brackets allowed). */
export function classifyAddress(address: string): AddressClass {
  const literal = address.startsWith("[") && address.endsWith("]") ? address.slice(1, -1) : address;
  // A zone index (fe80::1%eth0) only ever names a link-local interface.
  if (literal.includes("%")) return "link-local";
  if (!ipaddr.isValid(literal)) return "invalid";
  // Only canonical literals: "0x7f.1" or "2130706433" are names here, not addresses, so they
  // go through the resolver like any other name instead of slipping past a string comparison.
  if (ipaddr.IPv4.isValid(literal) && !ipaddr.IPv4.isValidFourPartDecimal(literal)) return "invalid";
  const parsed = ipaddr.parse(literal);
  if (METADATA_ADDRESSES.has(parsed.toNormalizedString()) || METADATA_ADDRESSES.has(parsed.toString())) return "metadata";
  // Typed loosely: the range names differ between the IPv4 and IPv6 tables and across versions.
  const range: string = parsed.range();
  switch (range) {
    case "unicast":
      return "public";
    case "loopback":
      return "loopback";
    case "private":
    case "uniqueLocal":
    case "carrierGradeNat":
    case "deprecatedSiteLocal":
      return "private";
    case "linkLocal":
      return "link-local";
    // ::ffff:a.b.c.d and the translation prefixes carry an IPv4 address inside an IPv6 one, a
    // classic way around IPv4-only block lists; none of them is a target a user needs.
    case "ipv4Mapped":
    case "rfc6145":
    case "rfc6052":
    case "6to4":
    case "teredo":
      return "ipv4-mapped";
    case "unspecified":
      return "unspecified";
    case "multicast":
    case "broadcast":
      return "multicast";
    default:
      return "reserved";
  }
}

/** Whether coursemesh may connect to this IP address when private hosts are not allowed. */
export function isPublicAddress(address: string): boolean {
  return classifyAddress(address) === "public";
}

/** Resolves a host name to every address it has (A and AAAA). */
export type Resolver = (host: string) => Promise<string[]>;

/** The system resolver (getaddrinfo), every address, in the order the system gives them. */
export const systemResolver: Resolver = async (host) => (await lookup(host, { all: true, verbatim: true })).map((entry) => entry.address);

/** A host or URL the guard refused; `message` says why in words a person can act on. */
export class HostNotAllowedError extends Error {
  override name = "HostNotAllowedError";
  constructor(
    message: string,
    readonly host: string,
    readonly address?: string,
    readonly addressClass?: AddressClass,
  ) {
    super(message);
  }
}

export interface GuardOptions {
  /** Let private, loopback and link-local addresses through (tests, lab networks). Never in production. */
  allowPrivate?: boolean;
  resolve?: Resolver;
}

/**
 * Resolves `host` (a name or an IP literal, e.g. `new URL(u).hostname`) and returns its addresses
 * when every one of them is public; throws HostNotAllowedError otherwise, including when the name
 * does not resolve. Every address must pass, so a name with one private record cannot be used to
 * reach it. Returns the addresses so a caller can connect to exactly what was checked.
 */
export async function assertPublicHost(host: string, options: GuardOptions = {}): Promise<string[]> {
  const bare = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
  if (bare === "") throw new HostNotAllowedError("the URL has no host", host);
  const literalClass = classifyAddress(bare);
  let addresses: string[];
  if (literalClass !== "invalid") {
    addresses = [bare];
  } else {
    try {
      addresses = await (options.resolve ?? systemResolver)(bare);
    } catch (error) {
      throw new HostNotAllowedError(`host ${bare} does not resolve (${(error as Error).message})`, host);
    }
    if (addresses.length === 0) throw new HostNotAllowedError(`host ${bare} does not resolve to any address`, host);
  }
  if (options.allowPrivate) return addresses;
  for (const address of addresses) {
    const addressClass = classifyAddress(address);
    if (addressClass !== "public") {
      const via = address === bare ? "" : ` (${bare} resolves to ${address})`;
      throw new HostNotAllowedError(`${address} is a ${addressClass} address${via}; only public addresses are allowed`, host, address, addressClass);
    }
  }
  return addresses;
}

/**
 * Checks a user-given URL: http or https only, no credentials in it, and a host that passes
 * assertPublicHost. Returns the parsed URL.
 */
export async function assertPublicUrl(raw: string, options: GuardOptions = {}): Promise<URL> {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new HostNotAllowedError(`"${raw}" is not a URL`, "");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new HostNotAllowedError(`only http and https URLs are allowed, not ${url.protocol}`, url.hostname);
  }
  if (url.username || url.password) throw new HostNotAllowedError("URLs with a user name or password are not allowed", url.hostname);
  await assertPublicHost(url.hostname, options);
  return url;
}
