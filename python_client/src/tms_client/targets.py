"""Where the servers are: a client target is one address, a list, or a DNS name to expand.

- ``"host:port"``: one server (gRPC resolves the name, as for any channel); ``"host"`` alone
  means port 50051, the server's default;
- ``["10.0.0.1:50051", "10.0.0.2:50051"]``: several servers;
- ``"dns:///name:port"``: every address the name resolves to, looked up again whenever the
  pool looks for workers, so servers that join later (a Kubernetes headless service scaling
  up) are found.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence

__all__ = ["DEFAULT_PORT", "parse_targets", "proxied", "refused", "resolve"]

_DNS = "dns:///"
#: The port of a target given without one: tms-server's default.
DEFAULT_PORT = 50051


def parse_targets(target: str | Sequence[str]) -> tuple[str, ...]:
    """The targets of a client, checked: each ``host:port`` or ``dns:///host:port`` (a host
    alone gets DEFAULT_PORT)."""
    targets = (target,) if isinstance(target, str) else tuple(target)
    if not targets:
        raise ValueError("no target given; expected 'host:port' or a list of them")
    return tuple(_checked(item) for item in targets)


def _checked(target: str) -> str:
    dns = target.startswith(_DNS)
    address = target.removeprefix(_DNS)
    if "://" in address:
        example = _with_port(address.partition("://")[2].strip("/"))
        raise ValueError(
            f"target {target!r} is a URL; give 'host:port' (e.g. {example!r}) or "
            "'dns:///host:port', with no scheme"
        )
    if "," in address:  # "h1:p1,h2:p2" would pass as a host "h1:p1,h2" and never resolve
        raise ValueError(
            f"target {target!r} is several addresses in one string; give one 'host:port', "
            "a list of them (['10.0.0.1:50051', '10.0.0.2:50051']), or 'dns:///name:port' "
            "for every address a name resolves to"
        )
    address = _with_port(address)
    _split(address)
    return _DNS + address if dns else address


def _with_port(address: str) -> str:
    """``address`` with DEFAULT_PORT when it has no port (an IPv6 address is in brackets)."""
    return address if ":" in address.rpartition("]")[2] else f"{address}:{DEFAULT_PORT}"


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"target {address!r} is not 'host:port'")
    return host.strip("[]"), int(port)


def _format(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ipaddress.ip_address(ip).version == 6 else f"{ip}:{port}"


def refused(address: str, timeout: float) -> bool:
    """Whether a TCP connection to ``address`` (``host:port``) is refused: nothing listens
    there. False when one is accepted, when that cannot be told within ``timeout`` seconds
    (no answer at all, a name that does not resolve), and when gRPC reaches the address
    through a proxy (see proxied), where a direct connection tells nothing."""
    if proxied(address):
        return False
    try:
        socket.create_connection(_split(address), timeout).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def proxied(address: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether gRPC connects to ``address`` through an HTTP CONNECT proxy, as its environment
    variables say: the first of grpc_proxy, https_proxy and http_proxy that is set names the
    proxy, and the first of no_grpc_proxy and no_proxy lists the hosts reached without it:
    CIDR blocks, and names that a host's name ends with (as gRPC matches them)."""
    if not any(environ.get(name) for name in ("grpc_proxy", "https_proxy", "http_proxy")):
        return False
    host = _split(address)[0].lower()
    listed = environ.get("no_grpc_proxy") or environ.get("no_proxy") or ""
    return not any(_exempts(entry.strip().lower(), host) for entry in listed.split(","))


def _exempts(entry: str, host: str) -> bool:
    """Whether a no_proxy ``entry`` covers ``host``."""
    if "/" in entry:  # a CIDR block
        try:
            return ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
    return bool(entry) and host.endswith(entry)


def resolve(targets: Sequence[str]) -> list[str]:
    """The addresses to look for workers at now: ``dns:///`` names expanded, others as given.

    A name that does not resolve contributes nothing this time.
    """
    addresses: list[str] = []
    for target in targets:
        if not target.startswith(_DNS):
            addresses.append(target)
            continue
        host, port = _split(target.removeprefix(_DNS))
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            continue
        for info in infos:
            address = _format(str(info[4][0]), port)
            if address not in addresses:
                addresses.append(address)
    return addresses
