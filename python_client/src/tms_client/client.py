"""``ModelClient``: call one model of TMS servers, spread over all their worker processes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from tms_client import calls
from tms_client.balancers import Balancer
from tms_client.calls import ImageToImageResult, ModelInfo, WorkerInfo
from tms_client.exceptions import ModelNotFoundError
from tms_client.images import ImageInput
from tms_client.pool import PoolOptions, WorkerPool
from tms_client.retry import RetryPolicy
from tms_client.tls import TLS

__all__ = ["ImageToImageResult", "ModelClient", "ModelInfo", "WorkerInfo"]

R = TypeVar("R")


class ModelClient:
    """A client for one model of a TMS server (or of several servers serving the same models).

    ``target`` is ``"host:port"``, a list of them, or ``"dns:///name:port"`` for every address
    a name resolves to. On creation the client waits up to ``connect_timeout`` seconds for the
    servers (raising ``ConnectError`` after that), then connects to every worker process
    behind them and spreads calls over them with ``balancer`` (``LeastLoaded()`` by default,
    which steers calls away from a slow or stuck worker; see tms_client.balancers).
    ``timeout`` is each call's deadline in seconds, retries included (None: no deadline);
    ``retry`` says which failures are retried (default: UNAVAILABLE, on another worker;
    ``RetryPolicy.never()`` turns retries off). Lost workers are dropped and new ones found
    in the background every ``refresh_interval`` seconds.

    ``tls`` (a ``TLS``) connects over TLS: the CA to trust, a client certificate and key for
    mutual TLS, the server name to expect. ``token`` is sent as ``authorization: Bearer
    <token>`` with every call; a server that refuses it raises UnauthenticatedError.

    Use it as a context manager, or call ``close()``. It is safe to share between threads.
    """

    def __init__(
        self,
        model: str,
        target: str | Sequence[str],
        *,
        connect_timeout: float = 10.0,
        timeout: float | None = 60.0,
        balancer: Balancer | None = None,
        retry: RetryPolicy | None = None,
        max_message_mb: int = 64,
        discovery_attempts: int | None = None,
        refresh_interval: float = 2.0,
        tls: TLS | None = None,
        token: str | None = None,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self._pool = WorkerPool(
            PoolOptions(
                target,
                connect_timeout=connect_timeout,
                balancer=balancer,
                retry=retry,
                max_message_bytes=max_message_mb * 1024 * 1024,
                discovery_attempts=discovery_attempts,
                refresh_interval=refresh_interval,
                tls=tls,
                token=token,
            )
        )
        self._pool.start()

    @property
    def target(self) -> str:
        """The targets, as one string."""
        return ", ".join(self._pool.options.targets)

    def __repr__(self) -> str:
        return f"<ModelClient model={self.model!r} pool={self._pool!r}>"

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection and stop looking for workers."""
        self._pool.close()

    def _send(self, call: calls.Call[R]) -> R:
        return call.parse(self._pool.call(call.path, call.request, timeout=self.timeout))

    # -- images -------------------------------------------------------------------------------

    def run_image(
        self, image: ImageInput, args: Mapping[str, Any] | None = None, *, color: str | None = "bgr"
    ) -> Any:
        """Run the model on one image and return its result (parsed JSON).

        ``color`` is the colour order of a numpy array ("bgr" as OpenCV reads, "rgb", ...);
        PIL images, paths and PNG/JPEG bytes carry their own.
        """
        return self._send(calls.run_image(self.model, image, args, color))

    def run_images(
        self,
        images: Sequence[ImageInput],
        args: Mapping[str, Any] | None = None,
        *,
        color: str | None = "bgr",
    ) -> list[Any]:
        """Run the model on several images in one call; one result per image."""
        return self._send(calls.run_images(self.model, images, args, color))

    def run_image_to_image(
        self,
        images: ImageInput | Sequence[ImageInput],
        args: Mapping[str, Any] | None = None,
        *,
        color: str | None = "bgr",
        output_color: str | None = None,
        png: bool = False,
    ) -> ImageToImageResult:
        """Run an image-to-image model on one image (or a list, e.g. two video frames).

        Returns the output images as numpy arrays (converted to ``output_color`` when given
        and the model names theirs) and the model's result. ``png`` asks the server to send
        the outputs PNG-compressed (smaller over slow links, slower on fast ones).
        """
        return self._send(
            calls.run_image_to_image(
                self.model, images, args, color=color, output_color=output_color, png=png
            )
        )

    # -- text ---------------------------------------------------------------------------------

    def run_text(self, text: str, args: Mapping[str, Any] | None = None) -> Any:
        """Run a text model on one text and return its result (parsed JSON)."""
        return self._send(calls.run_text(self.model, text, args))

    def run_texts(self, texts: Sequence[str], args: Mapping[str, Any] | None = None) -> list[Any]:
        """Run a text model on several texts in one call; one result per text."""
        return self._send(calls.run_texts(self.model, texts, args))

    # -- about the servers --------------------------------------------------------------------

    def info(self) -> ModelInfo:
        """What the server says about this model."""
        return self._send(calls.info(self.model))

    def list_models(self) -> list[ModelInfo]:
        """Every model the server has loaded."""
        return self._send(calls.list_models())

    def health(self, service: str | None = None) -> str:
        """The standard gRPC health status of this model (or of ``service``; "" for the
        whole server) on one worker: SERVING, NOT_SERVING or SERVICE_UNKNOWN."""
        try:
            return self._send(calls.health(self.model if service is None else service))
        except ModelNotFoundError:
            return "SERVICE_UNKNOWN"

    def workers(self) -> list[WorkerInfo]:
        """The worker processes this client is connected to, with their load."""
        return self._pool.worker_infos()
