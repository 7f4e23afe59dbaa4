"""``ClientOptions``: how a client finds TMS servers and talks to them, in one value.

``ModelClient``, ``AsyncModelClient``, ``AdminClient`` and the ``tms`` command all take one,
so a new option is one field here. Build it once and share it, or pass its fields as keyword
arguments of a client (each keyword overrides the field of the same name)::

    options = ClientOptions(target="localhost:50051", timeout=10, token=token)
    face = ModelClient("face", options=options)
    face = ModelClient("face", "localhost:50051", timeout=10, token=token)  # the same

Its repr shows the targets, timeouts and policies, never the token or a TLS key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tms_client.balancers import Balancer
from tms_client.retry import LONGEST_TIMEOUT, RetryPolicy, no_deadline_past
from tms_client.targets import parse_targets
from tms_client.tls import TLS, auth_metadata

__all__ = ["ClientOptions"]


@dataclass(frozen=True, kw_only=True)
class ClientOptions:
    """Settings of a TMS client.

    - ``target``: ``"host:port"``, a list of them, or ``"dns:///name:port"`` for every
      address the name resolves to (looked up again whenever the client looks for workers).
    - ``connect_timeout``: seconds to wait for the servers when the client starts (then
      ``ConnectError``). A server that accepts the connection is waited for (its TLS
      handshake, its first answer); an address that refuses it (nothing listens there) raises
      ``ConnectError`` at once, unless ``wait_for_server``.
    - ``wait_for_server``: also wait, up to ``connect_timeout``, at an address that refuses
      connections: a server still starting (tms-server listens only once its workers have
      loaded their models) or restarting.
    - ``timeout``: each call's deadline in seconds, retries included (None or math.inf: no
      deadline).
    - ``balancer``: which worker gets a call (None: ``LeastLoaded()``; see tms_client.balancers).
    - ``retry``: which failures are tried again, on another worker (``RetryPolicy.never()``
      turns retries off).
    - ``max_message_mb``: the largest request or reply, in MiB.
    - ``discovery_attempts``: connections to open at an address to find its workers
      (None: four per worker the server says it runs, plus four; eight and eight when the
      client starts).
    - ``refresh_interval``: seconds between background searches for missing workers.
    - ``tls``: connect over TLS (see ``TLS``); ``token``: sent as ``authorization: Bearer
      <token>`` with every call.
    - ``shared_memory``: pass images to workers on the same host through shared memory
      (proven by the worker, never assumed; see tms_client.shm); False: always as bytes.
    - ``call_streams``: carry model calls on streams kept open to each worker, one call at a
      time on each (``ModelService.Calls``; see tms_client.transport), where the server has
      them; False: each call on its own.
    """

    target: str | Sequence[str]
    connect_timeout: float = 10.0
    wait_for_server: bool = False
    timeout: float | None = 60.0
    balancer: Balancer | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_message_mb: int = 64
    discovery_attempts: int | None = None
    refresh_interval: float = 2.0
    tls: TLS | None = None
    token: str | None = field(default=None, repr=False)
    shared_memory: bool = True
    call_streams: bool = True
    #: ``target`` checked and as a tuple.
    targets: tuple[str, ...] = field(init=False, repr=False)
    #: The metadata sent with every call (the token).
    metadata: tuple[tuple[str, str], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", parse_targets(self.target))
        object.__setattr__(self, "metadata", auth_metadata(self.token))
        if not 0 < self.connect_timeout < LONGEST_TIMEOUT:
            raise ValueError(
                f"connect_timeout must be positive, in seconds, below {LONGEST_TIMEOUT:g}"
            )
        object.__setattr__(self, "timeout", no_deadline_past(self.timeout))
        if self.max_message_mb < 1:
            raise ValueError("max_message_mb must be at least 1")
        if self.refresh_interval <= 0:
            raise ValueError("refresh_interval must be positive")
        if self.discovery_attempts is not None and self.discovery_attempts < 1:
            raise ValueError("discovery_attempts must be at least 1")

    @classmethod
    def of(
        cls,
        target: str | Sequence[str] | None,
        options: ClientOptions | None,
        overrides: dict[str, Any],
    ) -> ClientOptions:
        """What a client's arguments add up to: ``options`` (or the defaults) with ``target``
        and each keyword in ``overrides`` put in."""
        if target is not None:
            overrides = {**overrides, "target": target}
        if options is None:
            if "target" not in overrides:
                raise TypeError("give a target ('host:port') or options=ClientOptions(...)")
            return cls(**overrides)
        return dataclasses.replace(options, **overrides) if overrides else options

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024
