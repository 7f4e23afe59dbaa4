/**
 * Where the servers are: `"host:port"`, a list of them, or `"dns:///name:port"` for every
 * address the name resolves to, looked up again (with node:dns) whenever the client looks for
 * workers, so servers that join later (a Kubernetes headless service scaling up) are found.
 * And whether anything listens at an address (`refused`), which the start asks first.
 */
import { lookup } from "node:dns/promises";
import { connect, isIPv4, isIPv6 } from "node:net";

const DNS = "dns:///";

function split(address: string): [string, number] {
  const colon = address.lastIndexOf(":");
  const host = address.slice(0, colon);
  const port = Number(address.slice(colon + 1));
  if (colon <= 0 || !Number.isInteger(port) || port <= 0 || port >= 65536 || !/^\d+$/.test(address.slice(colon + 1))) {
    throw new TypeError(`target ${JSON.stringify(address)} is not 'host:port'`);
  }
  return [host.replace(/^\[|\]$/g, ""), port];
}

/** `address` with tms-server's default port, 50051, when it has none (IPv6 is in brackets). */
function withPort(address: string): string {
  return address.slice(address.lastIndexOf("]") + 1).includes(":") ? address : `${address}:50051`;
}

/** The targets of a client, checked. */
export function parseTargets(target: string | readonly string[]): string[] {
  const targets = typeof target === "string" ? [target] : [...target];
  if (targets.length === 0) throw new TypeError("no target given; expected 'host:port' or a list of them");
  for (const item of targets) {
    const address = item.startsWith(DNS) ? item.slice(DNS.length) : item;
    if (address.includes("://")) {
      // "http://h:p" would pass as a host "http://h" that never resolves
      const example = withPort(address.slice(address.indexOf("://") + 3).replace(/^\/+|\/+$/g, ""));
      throw new TypeError(
        `target ${JSON.stringify(item)} is a URL; give 'host:port' (e.g. ${JSON.stringify(example)}) or ` +
          "'dns:///host:port', with no scheme",
      );
    }
    if (address.includes(",")) {
      // "h1:p1,h2:p2" would pass as a host "h1:p1,h2" and never resolve
      throw new TypeError(
        `target ${JSON.stringify(item)} is several addresses in one string; give one 'host:port', ` +
          `a list of them (["10.0.0.1:50051", "10.0.0.2:50051"]), or 'dns:///name:port' for ` +
          "every address a name resolves to",
      );
    }
    split(address);
  }
  return targets;
}

/**
 * Whether a TCP connection to `address` ("host:port") is refused: nothing listens there. False
 * when one is accepted, when that cannot be told within `timeoutMs` or before `signal` aborts
 * (no answer at all, a name that does not resolve), and when grpc-js reaches the address
 * through a proxy (see proxied), where a direct connection tells nothing.
 */
export function refused(address: string, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
  const [host, port] = split(address);
  if (proxied(host) || signal?.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const socket = connect({ host, port, autoSelectFamily: true });
    let settled = false;
    const end = (refusedHere: boolean): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", abort);
      socket.destroy();
      resolve(refusedHere);
    };
    const abort = (): void => end(false);
    const timer = setTimeout(abort, timeoutMs);
    signal?.addEventListener("abort", abort, { once: true });
    socket.once("connect", () => end(false));
    socket.on("error", (error: NodeJS.ErrnoException) => end(error.code === "ECONNREFUSED"));
  });
}

/**
 * Whether grpc-js connects to `host` through an HTTP CONNECT proxy, as its environment
 * variables say: the first of grpc_proxy, https_proxy and http_proxy that is set names the
 * proxy, and the first of no_grpc_proxy and no_proxy lists the hosts reached without it (IPv4
 * CIDR blocks, and names a host's name ends with), matched as grpc-js matches them.
 */
export function proxied(host: string, env: NodeJS.ProcessEnv = process.env): boolean {
  if (!(env.grpc_proxy || env.https_proxy || env.http_proxy)) return false;
  const listed = env.no_grpc_proxy || env.no_proxy;
  if (!listed) return true;
  return !listed.split(",").some((entry) => host.endsWith(entry) || (isIPv4(host) && inBlock(host, entry)));
}

/** Whether the IPv4 address `ip` is in the CIDR block `entry` ("10.0.0.0/8"). */
function inBlock(ip: string, entry: string): boolean {
  const [base, bits, ...rest] = entry.split("/");
  const length = Number.parseInt(bits ?? "", 10);
  if (rest.length > 0 || bits === undefined || !isIPv4(base!) || Number.isNaN(length) || length < 0 || length > 32) {
    return false;
  }
  const number = (dotted: string): number => dotted.split(".").reduce((sum, octet) => (sum << 8) + Number(octet), 0);
  const mask = -1 << (32 - length);
  return (number(ip) & mask) === (number(base!) & mask);
}

/** The addresses to look for workers at now: `dns:///` names expanded (a name that does not
 * resolve contributes nothing this time), others as given. */
export async function resolveTargets(targets: readonly string[]): Promise<string[]> {
  const addresses: string[] = [];
  for (const target of targets) {
    if (!target.startsWith(DNS)) {
      if (!addresses.includes(target)) addresses.push(target);
      continue;
    }
    const [host, port] = split(target.slice(DNS.length));
    let found: { address: string }[] = [];
    try {
      found = await lookup(host, { all: true });
    } catch {
      continue;
    }
    for (const { address } of found) {
      const formatted = isIPv6(address) ? `[${address}]:${port}` : `${address}:${port}`;
      if (!addresses.includes(formatted)) addresses.push(formatted);
    }
  }
  return addresses;
}
