/**
 * Where the servers are: `"host:port"`, a list of them, or `"dns:///name:port"` for every
 * address the name resolves to, looked up again (with node:dns) whenever the client looks for
 * workers, so servers that join later (a Kubernetes headless service scaling up) are found.
 */
import { lookup } from "node:dns/promises";
import { isIPv6 } from "node:net";

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

/** The targets of a client, checked. */
export function parseTargets(target: string | readonly string[]): string[] {
  const targets = typeof target === "string" ? [target] : [...target];
  if (targets.length === 0) throw new TypeError("no target given; expected 'host:port' or a list of them");
  for (const item of targets) split(item.startsWith(DNS) ? item.slice(DNS.length) : item);
  return targets;
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
