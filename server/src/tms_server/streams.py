"""RunImageStream: one model on a stream of frames (a video), on the worker that took it.

The stream's first message names the model and carries the stream's args; the model's
``open_stream`` hook gets them and may return an object of the stream's own (a tracker) that
runs its frames (tms_server.model). Each frame then goes the way of a RunImage call: its
image is viewed in place (tms_client.protocol.wire), or in the shared memory it names,
prepared as the model declared it
(``invoke.prepare_image``) and run under the model's lock (``invoke.run_model``), admitted
as a call of its own (``rpc.Stream.run``: a thread, a place in the queue, its pixels).

Each frame gets one answer, in order: its result, or its error as a google.rpc.Status (the
same as a failed call's status details) while the stream goes on; a frame refused by a full
worker is such an error too (QUEUE_FULL, RESOURCE_EXHAUSTED with RetryInfo). What fails the
stream itself (no such model, bad stream args, ``open_stream`` raising, a message that is not
a RunImageStreamRequest, a worker with ``--max-streams`` open: rpc.Worker.handle_stream) ends
it with that status. The next frame is read only after the
previous is answered, so a caller that keeps at most N frames unanswered has at most N in
flight, and one stream never runs two frames at once. A frame is answered only once the work
on it is over (its thread done, whether it succeeded or failed), so an answer tells the caller
the worker no longer reads that frame's pixels: a caller on the same host reuses its shared
memory for a later frame (tms_client.shm). Only a stream that ends unanswered (cancelled, past
its deadline) may leave a frame running.

When the stream ends, however it ends, the object's ``close()`` runs on a thread (after any
frame of the stream, or its ``open_stream``, still running), awaited unless the caller left.
``open_stream``, frames and ``close()`` are all work of the model: while one runs, none of the
model's calls runs on the event loop (tms_server.admission.QuickCalls).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from tms.v1 import model_service_pb2
from tms_client.protocol.methods import IMAGE_FIELD
from tms_client.protocol.wire import (
    ImageParts,
    TooManyImagesError,
    WireError,
    merge_singular,
    split_images,
)
from tms_server.errors import Internal, InvalidArgument, Reason
from tms_server.invoke import declared_pixels, prepare_image, received, result_json, run_model
from tms_server.registry import LoadedModel
from tms_server.rpc import Stream

__all__ = ["image_stream"]

pb = model_service_pb2
log = logging.getLogger("tms_server")

#: Finds a stream's model (by the first message's name), raising as RunImage would.
FindModel = Callable[[str], LoadedModel]
#: A message's args, parsed and checked against the model's args_schema.
ParseArgs = Callable[[LoadedModel, str], dict[str, Any]]
#: An image's bytes: its data, or a view of the shared memory it names (its field for errors).
ImageBytes = Callable[[ImageParts, str], ImageParts]

_MAX_OCCURRENCES = 16  # of the singular image field in one message (protobuf merges them)
assert pb.RunImageStreamRequest.DESCRIPTOR.fields_by_name["image"].number == IMAGE_FIELD


@dataclass
class _Opened:
    """A stream once its model has opened it."""

    model: LoadedModel
    args: dict[str, Any]  # the stream's
    runs: Any  # what runs its frames: the model, or the object open_stream returned
    lock: threading.Lock = field(default_factory=threading.Lock)  # one frame (or hook) at once
    closed: bool = False  # under the lock: no open_stream once the stream is over


async def image_stream(
    stream: Stream[bytes],
    find_model: FindModel,
    parse_args: ParseArgs,
    image_bytes: ImageBytes,
    max_pixels: int,
) -> AsyncIterator[pb.RunImageStreamResponse]:
    """Serve one RunImageStream: one answer per frame of ``stream``, in order."""
    opened: _Opened | None = None
    try:
        async for request in stream:
            message, occurrences = _read(request)
            received(occurrences)
            first = opened is None
            if opened is None:
                model = find_model(message.model)
                opened = _Opened(model, parse_args(model, message.args_json), model.instance)
                if model.overrides("open_stream"):
                    await stream.run(_open, opened, timed=False)
            answer = pb.RunImageStreamResponse(
                frame_id=message.frame_id, model_version=opened.model.info.version
            )
            try:
                args = opened.args
                if message.args_json and not first:
                    args = parse_args(opened.model, message.args_json)
                parts = merge_singular(occurrences)
                if parts is None:
                    raise InvalidArgument("no image in the frame", field="image")
                parts = image_bytes(parts, "image")
                pixels = declared_pixels(parts, unknown=max_pixels)
                answer.result_json = await stream.run(
                    _frame, opened, parts, args, max_pixels, pixels=pixels
                )
            except Exception as exc:  # the frame fails alone
                answer.error_status = stream.error_status(exc)
            yield answer
    finally:
        if opened is not None and opened.model.overrides("open_stream"):
            await stream.aside(functools.partial(_close, opened))


def _read(request: bytes) -> tuple[pb.RunImageStreamRequest, list[ImageParts]]:
    try:
        return split_images(
            pb.RunImageStreamRequest, request, IMAGE_FIELD, max_images=_MAX_OCCURRENCES
        )
    except (WireError, TooManyImagesError) as exc:
        raise InvalidArgument(f"malformed RunImageStreamRequest: {exc}") from None


def _open(opened: _Opened) -> None:
    """The model's open_stream(args), on a thread: what it returns runs the frames. Not once
    the stream is over (a caller that left while the call waited for a thread)."""
    with opened.lock:
        if not opened.closed:
            runs = run_model(opened.model, opened.model.instance.open_stream, opened.args)
            if runs is not None:
                opened.runs = runs  # its close() is called when the stream ends, as ever
                if not callable(getattr(runs, "run", None)):
                    raise Internal(
                        f"model {opened.model.name!r}: open_stream returned "
                        f"{type(runs).__name__}, which has no run(image, args) method; return "
                        "None (the frames go to the model's run) or an object whose run takes "
                        "each frame",
                        reason=Reason.MODEL_FAILED,
                    )


def _frame(opened: _Opened, parts: ImageParts, args: dict[str, Any], max_pixels: int) -> str:
    """One frame, on a worker thread: prepared, run, its result as JSON."""
    model = opened.model
    image = prepare_image(model, parts, max_pixels, "image")
    with opened.lock:
        result = run_model(model, opened.runs.run, image, args)
    return result_json(model, result)


def _close(opened: _Opened) -> None:
    """The stream object's close(), if it has one, on a thread, once the stream's hook or
    frame running (if any) is over; whatever it raises is logged by run_model."""
    with opened.lock:
        opened.closed = True
        own = opened.runs is not opened.model.instance  # the model's close() is not the stream's
        close = getattr(opened.runs, "close", None) if own else None
        if close is not None:
            with contextlib.suppress(Exception):
                run_model(opened.model, close)
