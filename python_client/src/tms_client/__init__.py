"""TMS client: call the models of a TMS server from Python.

``ModelClient(model, "host:port")`` finds every worker process behind the address, balances
calls over them and converts images (numpy, PIL, files, PNG/JPEG bytes) for you. ``ClientOptions``
holds every setting; ``TLS`` and ``token=`` secure it; ``AdminClient`` makes the operator's calls;
``check_health`` asks a server whether it is up, with no token.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from tms_client.admin import AdminClient, ReloadOutcome, WorkerStatus
from tms_client.aio import AsyncModelClient
from tms_client.balancers import Balancer, LeastLoaded, RandomBalancer, RoundRobin
from tms_client.calls import FrameResult, ImageToImageResult, ModelInfo
from tms_client.client import ModelClient
from tms_client.exceptions import (
    CallError,
    ClientClosedError,
    ConnectError,
    DeadlineExceededError,
    InvalidInputError,
    ModelFailedError,
    ModelNotFoundError,
    ModelNotReadyError,
    PermissionDeniedError,
    ResourceExhaustedError,
    TMSError,
    UnauthenticatedError,
    UnavailableError,
    UnsupportedCallError,
)
from tms_client.options import ClientOptions
from tms_client.probe import check_health
from tms_client.protocol.codec import ImageError
from tms_client.retry import RetryPolicy
from tms_client.tls import TLS
from tms_client.workers import WorkerInfo

__all__ = [  # noqa: RUF022 - plain sorted order, as tests/unit/test_exported_members.py checks
    "AdminClient",
    "AsyncModelClient",
    "Balancer",
    "CallError",
    "ClientClosedError",
    "ClientOptions",
    "ConnectError",
    "DeadlineExceededError",
    "FrameResult",
    "ImageError",
    "ImageToImageResult",
    "InvalidInputError",
    "LeastLoaded",
    "ModelClient",
    "ModelFailedError",
    "ModelInfo",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "PermissionDeniedError",
    "RandomBalancer",
    "ReloadOutcome",
    "ResourceExhaustedError",
    "RetryPolicy",
    "RoundRobin",
    "TLS",
    "TMSError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnsupportedCallError",
    "WorkerInfo",
    "WorkerStatus",
    "__version__",
    "check_health",
]

try:
    __version__ = _version("tms-client")
except _PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
