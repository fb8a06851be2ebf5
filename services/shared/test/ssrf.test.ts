import { describe, expect, test } from "bun:test";
import { assertPublicHost, assertPublicUrl, classifyAddress, HostNotAllowedError, isPublicAddress, type Resolver } from "../src/net/ssrf.ts";

// Stub resolvers only: these tests never touch DNS or the network.
const resolvesTo =
  (...addresses: string[]): Resolver =>
  async () =>
    addresses;
const unknownHost: Resolver = async (host) => {
  throw new Error(`getaddrinfo ENOTFOUND ${host}`);
};

async function refusal(promise: Promise<unknown>): Promise<HostNotAllowedError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(HostNotAllowedError);
    return error as HostNotAllowedError;
  }
  throw new Error("expected the guard to refuse");
}

describe("classifyAddress", () => {
  const cases: [string, string][] = [
    ["93.184.215.14", "public"],
    ["8.8.8.8", "public"],
    ["2606:4700:4700::1111", "public"],
    ["10.1.2.3", "private"],
    ["172.16.0.1", "private"],
    ["172.31.255.255", "private"],
    ["192.168.1.1", "private"],
    ["100.64.0.1", "private"],
    ["fc00::1", "private"],
    ["fd12:3456::1", "private"],
    ["127.0.0.1", "loopback"],
    ["127.255.0.9", "loopback"],
    ["::1", "loopback"],
    ["[::1]", "loopback"],
    ["169.254.1.1", "link-local"],
    ["fe80::1", "link-local"],
    ["fe80::1%eth0", "link-local"],
    ["169.254.169.254", "metadata"],
    ["fd00:ec2::254", "metadata"],
    ["::ffff:127.0.0.1", "ipv4-mapped"],
    ["::ffff:10.0.0.1", "ipv4-mapped"],
    ["::ffff:7f00:1", "ipv4-mapped"],
    ["64:ff9b::a00:1", "ipv4-mapped"],
    ["2002:a00:1::", "ipv4-mapped"],
    ["0.0.0.0", "unspecified"],
    ["::", "unspecified"],
    ["224.0.0.1", "multicast"],
    ["255.255.255.255", "multicast"],
    ["ff02::1", "multicast"],
    ["192.0.2.1", "reserved"],
    ["240.0.0.1", "reserved"],
    ["2001:db8::1", "reserved"],
    ["example.com", "invalid"],
    // Non-canonical IPv4 spellings are treated as names, never as literals that skip resolution.
    ["2130706433", "invalid"],
    ["0x7f.0.0.1", "invalid"],
  ];
  for (const [address, expected] of cases) {
    test(`${address} is ${expected}`, () => {
      expect(classifyAddress(address)).toBe(expected as ReturnType<typeof classifyAddress>);
      expect(isPublicAddress(address)).toBe(expected === "public");
    });
  }
});

describe("assertPublicHost", () => {
  test("a name that resolves only to public addresses passes and returns them", async () => {
    expect(await assertPublicHost("hooks.example.com", { resolve: resolvesTo("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c") })).toEqual([
      "93.184.215.14",
      "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
    ]);
  });

  test("one private record among public ones refuses the whole name", async () => {
    const error = await refusal(assertPublicHost("mixed.example.com", { resolve: resolvesTo("93.184.215.14", "10.0.0.5") }));
    expect(error.address).toBe("10.0.0.5");
    expect(error.addressClass).toBe("private");
    expect(error.message).toContain("mixed.example.com resolves to 10.0.0.5");
  });

  test("a name pointing at the metadata service is refused as metadata", async () => {
    const error = await refusal(assertPublicHost("metadata.attacker.test", { resolve: resolvesTo("169.254.169.254") }));
    expect(error.addressClass).toBe("metadata");
  });

  test("localhost and IPv4-mapped loopback are refused", async () => {
    expect((await refusal(assertPublicHost("localhost", { resolve: resolvesTo("127.0.0.1", "::1") }))).addressClass).toBe("loopback");
    expect((await refusal(assertPublicHost("[::ffff:127.0.0.1]", { resolve: unknownHost }))).addressClass).toBe("ipv4-mapped");
  });

  test("IP literals are checked without asking the resolver", async () => {
    let asked = false;
    const spy: Resolver = async () => {
      asked = true;
      return [];
    };
    await refusal(assertPublicHost("192.168.0.10", { resolve: spy }));
    expect(await assertPublicHost("8.8.4.4", { resolve: spy })).toEqual(["8.8.4.4"]);
    expect(asked).toBe(false);
  });

  test("a name that does not resolve is refused with the resolver's reason", async () => {
    const error = await refusal(assertPublicHost("nowhere.invalid", { resolve: unknownHost }));
    expect(error.message).toContain("does not resolve");
    await refusal(assertPublicHost("empty.example.com", { resolve: resolvesTo() }));
  });

  test("allowPrivate lets loopback through (tests, lab networks)", async () => {
    expect(await assertPublicHost("localhost", { allowPrivate: true, resolve: resolvesTo("127.0.0.1") })).toEqual(["127.0.0.1"]);
  });
});

describe("assertPublicUrl", () => {
  test("http and https URLs with public hosts pass", async () => {
    const url = await assertPublicUrl("https://hooks.example.com/coursemesh?x=1", { resolve: resolvesTo("93.184.215.14") });
    expect(url.hostname).toBe("hooks.example.com");
  });

  test("other schemes, credentials and garbage are refused", async () => {
    const resolve = resolvesTo("93.184.215.14");
    expect((await refusal(assertPublicUrl("file:///etc/passwd", { resolve }))).message).toContain("only http and https");
    expect((await refusal(assertPublicUrl("gopher://example.com/", { resolve }))).message).toContain("only http and https");
    expect((await refusal(assertPublicUrl("https://user:pw@example.com/", { resolve }))).message).toContain("user name or password");
    expect((await refusal(assertPublicUrl("not a url", { resolve }))).message).toContain("not a URL");
  });

  test("decimal and hex spellings of loopback are normalised by the URL parser and refused", async () => {
    expect((await refusal(assertPublicUrl("http://2130706433/", { resolve: unknownHost }))).addressClass).toBe("loopback");
    expect((await refusal(assertPublicUrl("http://0x7f.1/", { resolve: unknownHost }))).addressClass).toBe("loopback");
    expect((await refusal(assertPublicUrl("http://[::ffff:169.254.169.254]/", { resolve: unknownHost }))).addressClass).toBe("ipv4-mapped");
  });
});
