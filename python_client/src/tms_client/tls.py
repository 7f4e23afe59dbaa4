"""``TLS``: how the client checks the server, and proves who it is, over TLS.

    TLS()                                    # the system's root certificates
    TLS(ca="ca.pem")                         # a private CA
    TLS(ca="ca.pem", cert="me.pem", key="me.key")   # mutual TLS: a client certificate
    TLS(ca=ca_bytes, server_name="tms.internal")    # the name the server's certificate has

Each of ``ca``, ``cert`` and ``key`` is a path or the PEM bytes themselves. Files are read
once, when the client is created.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = ["TLS", "PemSource", "auth_metadata"]

#: A path to a PEM file, or the PEM bytes.
PemSource = str | os.PathLike[str] | bytes


def _pem(source: PemSource | None, what: str) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS {what} {source}: {exc.strerror or exc}") from None


def _shown(source: PemSource | None) -> str:
    if source is None:
        return "None"
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return repr(os.fspath(source))


@dataclass(frozen=True, repr=False)
class TLS:
    """TLS settings of a client: CA bundle (None: system roots), client certificate and key
    (mutual TLS; both or neither), and the server name to verify instead of the host's."""

    ca: PemSource | None = None
    cert: PemSource | None = None
    key: PemSource | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLS: cert and key go together (mutual TLS needs both)")

    def __repr__(self) -> str:  # never the key itself
        return (
            f"TLS(ca={_shown(self.ca)}, cert={_shown(self.cert)}, "
            f"key={'None' if self.key is None else '<hidden>'}, server_name={self.server_name!r})"
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials, reading the files now."""
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca, "CA bundle"),
            private_key=_pem(self.key, "key"),
            certificate_chain=_pem(self.cert, "certificate"),
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        """Channel options: the name to verify the server's certificate against."""
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata that carries ``token``: ``authorization: Bearer <token>``."""
    if token is None:
        return ()
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError("a token is printable ASCII without spaces")
    return (("authorization", f"Bearer {token}"),)
