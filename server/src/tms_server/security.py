"""Who may connect and who may call: TLS credentials that reload, and bearer tokens.

- TLS: ``--tls-cert``/``--tls-key`` serve TLS; ``--tls-client-ca`` makes it mutual (clients
  without a certificate from that CA are refused during the handshake). gRPC asks
  ``CertificateFiles.fetch`` before every new handshake; it looks at the files' mtimes and
  hands over a new configuration only when they changed and the new pair loads, so renewed
  certificates are used by new connections without a restart (existing ones keep theirs).
  HTTPS (``https_context``) does the same from the TLS handshake's server-name callback.
- Tokens: ``--tokens-file`` holds call tokens, one a line (blank lines and ``#`` comments
  ignored). ``TokenInterceptor`` checks ``authorization: Bearer <token>`` on every call except
  health checks (``Health/Check``: load balancers and Kubernetes probe without credentials)
  and the AdminService (which checks admin tokens itself); a missing or wrong token ends the
  call with UNAUTHENTICATED. Files are read again at most once a second; one that turns
  unreadable, empty or malformed refuses every token (an ERROR in the log) until it is fixed.
  Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
import os
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

from tms_client.protocol.methods import HEALTH_CHECK
from tms_server.errors import ServiceError, Unauthenticated, status_of
from tms_server.settings import Settings

__all__ = [
    "ADMIN_PREFIX",
    "OPEN_METHOD",
    "CertificateFiles",
    "SecurityError",
    "TokenFile",
    "TokenInterceptor",
    "bearer_token",
    "check_files",
    "server_credentials",
    "token_file",
]

log = logging.getLogger("tms_server")

#: The one method open to callers without a token: health checks.
OPEN_METHOD = HEALTH_CHECK
ADMIN_PREFIX = "/tms.v1.AdminService/"
_RECHECK_SECONDS = 1.0


class SecurityError(ValueError):
    """A certificate, key or token file that cannot be used; the message names it."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SecurityError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _mtime(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


class CertificateFiles:
    """The server's certificate, key and (for mutual TLS) client CA, re-read when they change."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self.context, self.initial = self._load()
        self._rejected: tuple[int | None, ...] | None = None

    def __repr__(self) -> str:
        return f"<CertificateFiles cert={self.cert} client_ca={self.client_ca}>"

    def _stamps(self) -> tuple[int | None, ...]:
        return (_mtime(self.cert), _mtime(self.key), _mtime(self.client_ca))

    def _load(self) -> tuple[ssl.SSLContext, Any]:
        """The files as a server SSLContext (for HTTPS) and as a gRPC certificate
        configuration; SecurityError if they do not load."""
        cert, key = _read(self.cert, "tls_cert"), _read(self.key, "tls_key")
        client_ca = _read(self.client_ca, "tls_client_ca") if self.client_ca else None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            # Catches a key that does not belong to the certificate (say, mid-rotation).
            context.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise SecurityError(f"cannot use tls_cert {self.cert} with tls_key: {exc}") from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise SecurityError(
                    f"cannot use tls_client_ca {self.client_ca}: it must hold the CA "
                    f"certificates (PEM) that client certificates are checked against: {exc}"
                ) from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context, grpc.ssl_server_certificate_configuration([(key, cert)], client_ca)

    def fetch(self) -> Any:
        """Called by gRPC before each new handshake: a new configuration, or None (no change)."""
        renewed = self.renewed()
        return None if renewed is None else renewed[1]

    def renewed(self) -> tuple[ssl.SSLContext, Any] | None:
        """The files loaded again if they changed since they were last loaded and the new ones
        load (see ``_load``), else None."""
        stamp = self._stamps()
        if stamp in (self._stamp, self._rejected):
            return None
        with self._lock:
            if stamp == self._stamp:
                return None
            try:
                loaded = self._load()
            except SecurityError as exc:
                log.warning("keeping the TLS files in use: %s", exc)
                self._rejected = stamp
                return None
            if stamp != self._stamps():  # changed while being read: try again next time
                return None
            self._stamp = stamp
            log.info("TLS certificate reloaded from %s", self.cert)
            return loaded


def _certificate_files(settings: Settings) -> CertificateFiles:
    assert settings.tls_cert is not None
    assert settings.tls_key is not None
    return CertificateFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


def https_context(settings: Settings) -> ssl.SSLContext:
    """The HTTPS port's TLS (mutual with a client CA), following changes to the files: each
    handshake starts on this context, whose server-name callback (called for every client,
    with or without a name) moves it to the newest pair that loads."""
    files = _certificate_files(settings)
    first = current = files.context

    def newest(connection: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        nonlocal current
        renewed = files.renewed()
        if renewed is not None:
            current = renewed[0]
        if current is not first:
            connection.context = current

    first.sni_callback = newest
    return first


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    """TLS (mutual with a client CA) credentials that follow changes to the files."""
    files = _certificate_files(settings)
    return grpc.dynamic_ssl_server_credentials(
        files.initial,
        files.fetch,
        require_client_authentication=settings.tls_client_ca is not None,
    )


class TokenFile:
    """A set of tokens from a file (one a line), read again when it changes.

    A file that cannot be used (unreadable, missing, empty, or with a line that is not a token)
    stops the server at start; one that turns bad while serving refuses every token until it
    is fixed, so that an edit meant to revoke a token never leaves the old tokens working.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._tokens = self._load()
        self._problem: str | None = None  # why every token is refused, while the file is bad

    def __repr__(self) -> str:  # never the tokens themselves
        return f"<TokenFile {self.what} {self.path} ({len(self._tokens)} tokens)>"

    def _load(self) -> tuple[bytes, ...]:
        text = _read(self.path, self.what).decode("utf-8", "replace")
        tokens = []
        for number, line in enumerate(text.splitlines(), 1):
            token = line.strip()
            if not token or token.startswith("#"):
                continue
            if not token.isascii() or not token.isprintable() or " " in token:
                raise SecurityError(
                    f"{self.what} {self.path} line {number}: a token is printable ASCII "
                    "without spaces"
                )
            tokens.append(token.encode())
        if not tokens:
            raise SecurityError(f"{self.what} {self.path} holds no token")
        return tuple(tokens)

    def _reload(self) -> None:
        # The whole file is read each time (it is small): modification times can hide a
        # rewrite, and a changed outcome, not a changed file, is what gets logged.
        try:
            tokens, problem = self._load(), None
        except SecurityError as exc:
            tokens, problem = (), str(exc)
        if problem is not None and problem != self._problem:
            log.error("refusing every token until the %s is fixed: %s", self.what, problem)
        elif problem is None and self._problem is not None:
            log.info("%s %s can be used again; its tokens are accepted", self.what, self.path)
        elif problem is None and tokens != self._tokens:
            log.info("%s reloaded from %s", self.what, self.path)
        self._tokens, self._problem = tokens, problem

    def tokens(self) -> tuple[bytes, ...]:
        """The file's tokens as last read (none while it is bad), read again once a second."""
        if time.monotonic() - self._checked >= _RECHECK_SECONDS:
            with self._lock:
                if time.monotonic() - self._checked >= _RECHECK_SECONDS:
                    self._reload()
                    self._checked = time.monotonic()
        return self._tokens

    def revokes(self, token: bytes | None) -> bool:
        """Whether the file, read well, no longer holds ``token``: what ends a stream opened
        with it. While the file is bad (mid-rewrite, say: truncated, then written) such a
        stream goes on, though every new call is refused (``accepts``)."""
        return not self.accepts(token) and self._problem is None

    def accepts(self, token: bytes | None) -> bool:
        """Whether ``token`` is one of the file's (compared in constant time)."""
        if token is None:
            return False
        found = False
        for known in self.tokens():
            found |= hmac.compare_digest(known, token)
        return found


def token_file(settings: Settings, setting: str) -> TokenFile | None:
    """The tokens of file setting ``setting`` (tokens_file, admin_tokens_file); None unset."""
    path = getattr(settings, setting)
    return None if path is None else TokenFile(path, setting)


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> bytes | None:
    """The token of an ``authorization: Bearer <token>`` entry, if there is one."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.encode() if isinstance(value, str) else value
            scheme, _, token = text.partition(b" ")
            if scheme.lower() == b"bearer" and token:
                return token.strip()
    return None


def _deny(refusal: ServiceError) -> grpc.RpcMethodHandler[Any, Any]:
    status = status_of(refusal, "authentication")  # with its ErrorInfo, as every error has

    # Stream-unary: the call ends without its request being read.
    async def abort(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(status.code, status.details, status.trailing_metadata)

    return grpc.stream_unary_rpc_method_handler(abort)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Ends calls without a valid call token with UNAUTHENTICATED (health checks and admin
    aside: ``Health/Check`` is open to probes, the AdminService checks admin tokens itself)."""

    def __init__(self, tokens: TokenFile) -> None:
        self._tokens = tokens
        self._missing = _deny(
            Unauthenticated(
                "this server needs a token: send 'authorization: Bearer <token>' metadata"
            )
        )
        self._wrong = _deny(Unauthenticated("the token is not valid here"))

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        if method == OPEN_METHOD or method.startswith(ADMIN_PREFIX):
            return await continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is None:
            return self._missing
        if not self._tokens.accepts(token):
            return self._wrong
        return await continuation(handler_call_details)


def check_files(settings: Settings) -> None:
    """Read every certificate, key and token file once, as the server will (SecurityError
    naming the setting if one cannot be used), so a bad file stops the server at start."""
    if settings.tls:
        _certificate_files(settings)
    calls, admin = token_file(settings, "tokens_file"), token_file(settings, "admin_tokens_file")
    if calls is not None and admin is not None and set(calls.tokens()) & set(admin.tokens()):
        raise SecurityError("a token is in both tokens_file and admin_tokens_file; keep them apart")
