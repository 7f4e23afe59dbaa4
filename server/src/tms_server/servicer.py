"""The tms.v1.ModelService of one worker process: validate, decode, run the model, encode."""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from tms.v1 import image_pb2, model_service_pb2
from tms_client.protocol.methods import IMAGE_FIELD, OUTPUT_FIELD
from tms_client.protocol.wire import (
    ImageParts,
    TooManyImagesError,
    WireError,
    join_images,
    merge_singular,
    split_images,
    varint,
)
from tms_server.callinfo import CURRENT
from tms_server.crashes import Buffer
from tms_server.errors import InvalidArgument, Reason, ServiceError, Unimplemented
from tms_server.invoke import (
    declared_pixels,
    encode_output,
    image_outputs,
    prepare_image,
    received,
    result_json,
    run_batch,
    run_model,
)
from tms_server.limits import check_args, parse_args
from tms_server.load import WorkerLoad
from tms_server.registry import LoadedModel, ModelRegistry
from tms_server.rpc import Stream, quick, raw
from tms_server.shm import Regions
from tms_server.streams import image_stream

__all__ = ["MODEL_CALLS", "RAW_REQUESTS", "RAW_RESPONSES", "ModelServicer", "WorkerIdentity"]

pb = model_service_pb2
log = logging.getLogger("tms_server")
M = TypeVar("M", bound=Message)
T = TypeVar("T")

#: Methods that call a model.
MODEL_CALLS = frozenset({"RunImage", "RunImageBatch", "RunImageToImage", "RunText", "RunTextBatch"})
#: Methods whose requests (and responses) the servicer handles as bytes.
RAW_REQUESTS = frozenset({"RunImage", "RunImageBatch", "RunImageToImage"})
RAW_RESPONSES = frozenset({"RunImageToImage"})
_CALL_NAMES: dict[pb.ModelCall.ValueType, str] = {
    pb.MODEL_CALL_RUN_IMAGE: "RunImage",
    pb.MODEL_CALL_RUN_IMAGE_BATCH: "RunImageBatch",
    pb.MODEL_CALL_RUN_IMAGE_TO_IMAGE: "RunImageToImage",
    pb.MODEL_CALL_RUN_TEXT: "RunText",
    pb.MODEL_CALL_RUN_TEXT_BATCH: "RunTextBatch",
}


@dataclass(frozen=True)
class WorkerIdentity:
    """Who this worker process is, as GetWorkerInfo reports it."""

    instance_id: str
    worker_index: int
    worker_count: int
    server_version: str
    device: str = "cpu"  # as the server names it: "cpu", "cuda:1"

    @property
    def key(self) -> str:
        """``<instance id>/<pid>``, as clients key workers."""
        return f"{self.instance_id}/{os.getpid()}"

    def response(self) -> pb.GetWorkerInfoResponse:
        return pb.GetWorkerInfoResponse(
            instance_id=self.instance_id,
            pid=os.getpid(),
            worker_index=self.worker_index,
            worker_count=self.worker_count,
            server_version=self.server_version,
            hostname=socket.gethostname(),
            device=self.device,
        )


def _read(cls: type[M], request: bytes, max_images: int) -> tuple[M, list[ImageParts]]:
    """A request message and the images it carries (field 2 in every such request); read
    once per call, when its pixels are weighed, and kept in its CallInfo for the method. A
    request laid out as a recent one is read by its layout (see _Layouts)."""
    call = CURRENT.get()
    if call is not None and call.read is not None and call.read[0] is request:
        return call.read[1]  # type: ignore[no-any-return]
    read = _LAYOUTS.read(cls, request) if max_images else None  # a layout holds one image
    if read is None:
        try:
            read = split_images(cls, request, IMAGE_FIELD, max_images=max_images)
        except WireError as exc:
            raise InvalidArgument(f"malformed {cls.DESCRIPTOR.name}: {exc}") from None
        except TooManyImagesError:
            raise InvalidArgument(
                _too_many("images", max_images, "--max-batch-size"),
                reason=Reason.BATCH_TOO_LARGE,
                field="images",
            ) from None
        _LAYOUTS.learn(cls, request, *read)
    if call is not None:
        call.read = (request, read)
    return read


class _Layouts:
    """How recent requests of one image were laid out, so that the next one laid out alike (a
    client sending images of one size to one model) is read without walking its fields.

    A layout is kept for a request that is its message, then its image: the image's metadata,
    then its data to the end of the request, each as protobuf serializes it (as the TMS
    clients write them). Those first bytes fix every field's bounds, so a request of the same
    length that starts with the same bytes holds the same message and metadata, and its
    pixels are the rest. Those messages are shared by every call that reads them: only read.
    """

    def __init__(self) -> None:
        self._known: dict[tuple[type[Message], int], tuple[_Layout, ...]] = {}

    def read(self, cls: type[M], request: bytes) -> tuple[M, list[ImageParts]] | None:
        """The message and image of a request laid out as a known one; None for any other."""
        for head, message, meta in self._known.get((cls, len(request)), ()):
            if request.startswith(head):
                data = memoryview(request)[len(head) :]  # read-only: a view of bytes
                return message, [ImageParts(meta, data)]  # type: ignore[return-value]
        return None

    def learn(
        self, cls: type[Message], request: bytes, message: Message, images: list[ImageParts]
    ) -> None:
        """Keep the layout of a request just read, if it has one image laid out as above."""
        if len(images) != 1:
            return
        meta = images[0].meta
        size = memoryview(images[0].data).nbytes
        image = meta.SerializeToString() + _DATA_KEY + varint(size)
        head = message.SerializeToString() + _IMAGE_KEY + varint(len(image) + size) + image
        if (
            len(head) > _MAX_HEAD
            or len(head) + size != len(request)
            or not request.startswith(head)
        ):
            return
        if len(self._known) >= _MAX_LENGTHS:
            self._known.clear()  # callers that keep changing; the steady ones come back
        key = (cls, len(request))
        kept = self._known.get(key, ())[1 - _LAYOUTS_PER_LENGTH :]
        self._known[key] = (*kept, (head, message, meta))


#: A request's bytes up to its image's data, its message, and its image's metadata.
_Layout = tuple[bytes, Message, image_pb2.Image]
_LAYOUTS = _Layouts()
_IMAGE_KEY = varint((IMAGE_FIELD << 3) | 2)  # a length-delimited field
_DATA_KEY = varint((image_pb2.Image.DESCRIPTOR.fields_by_name["data"].number << 3) | 2)
_MAX_HEAD = 4096  # bytes of a layout kept: a request with long args is read anew
_MAX_LENGTHS = 64  # request lengths with layouts kept
_LAYOUTS_PER_LENGTH = 4  # say, calls to models of names as long, of images of one size


def _too_many(what: str, limit: int, source: str) -> str:
    return f"a call takes at most {limit} {what} ({source}); split them over several calls"


def check_admitted(name: str, field: str) -> None:
    """InvalidArgument unless model ``name`` is the one admission counted this call for.

    Admission reads the model from the request's first field (tms_server.rpc) and keeps that
    model's other calls off the event loop while this one runs: a request that names another
    model there (its model field later, or twice) would let them wait on the loop for the
    model this one holds.
    """
    info = CURRENT.get()
    if info is not None and info.model != name:
        raise InvalidArgument(
            f"the request names model {name!r} in a field other than its first, or more than "
            f"once: write the {field} field first and once, as protobuf encoders do",
            field=field,
        )


def _by_raw_request(
    function: Callable[[type[Message], bytes], T],
) -> dict[str, Callable[[bytes], T]]:
    """``function`` bound to the request class of each method whose requests carry images
    (read as bytes: RAW_REQUESTS), by method name."""
    return {
        name: functools.partial(function, getattr(pb, f"{name}Request")) for name in RAW_REQUESTS
    }


class ModelServicer:
    """Serves the models of a registry; its methods raise, and tms_server.rpc turns what
    they raise into the call's status.

    RunImage, RunImageBatch and RunImageToImage take their requests as bytes and
    RunImageToImage answers in bytes: tms_client.protocol.wire reads and writes the images in place.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        identity: WorkerIdentity,
        *,
        max_pixels: int,
        max_batch_size: int = 64,
        load: WorkerLoad | None = None,
        regions: Regions | None = None,
    ) -> None:
        self.load = load if load is not None else WorkerLoad(identity.key)
        #: The shared-memory regions callers on this host lent this worker.
        self.regions = regions if regions is not None else Regions()
        self._registry = registry
        self.max_pixels = max_pixels
        self.max_batch_size = max_batch_size
        self._worker_info = identity.response()

    def _model(
        self, name: str, call: pb.ModelCall.ValueType, *, asked: str | None = None
    ) -> LoadedModel:
        """Model ``name``, which must support ``call``; ``asked`` is the RPC the caller made,
        when it is not ``call`` itself, for the error to name."""
        model = self._registry.get(name)
        check_admitted(name, "model")
        if not model.supports(call):
            supported = ", ".join(_CALL_NAMES[c] for c in model.info.calls)
            raise Unimplemented(
                f"model {name!r} does not support {asked or _CALL_NAMES[call]}; "
                f"it supports {supported}"
            )
        return model

    @staticmethod
    def _args(model: LoadedModel, text: str) -> dict[str, Any]:
        """A call's args, parsed and checked against the model's args_schema."""
        if not text and model.takes_no_args:
            return {}
        args = parse_args(text)
        check_args(model.args_validator, args)
        return args

    def batch_limit(self, model: LoadedModel) -> tuple[int, str]:
        """The most inputs one call to ``model`` may carry (its max_batch_size, at most
        --max-batch-size), and which of the two it is, as an error message names it."""
        limit = min(model.info.max_batch_size or self.max_batch_size, self.max_batch_size)
        if limit < self.max_batch_size:
            return limit, f"the max_batch_size of model {model.name!r}"
        return limit, "--max-batch-size"

    def _check_batch(self, model: LoadedModel, count: int, what: str) -> None:
        """BATCH_TOO_LARGE for more inputs than the model's max_batch_size (at most ours)."""
        limit, source = self.batch_limit(model)
        if count > limit:
            raise InvalidArgument(
                _too_many(what, limit, source),
                reason=Reason.BATCH_TOO_LARGE,
                field=what,
            )

    def _images(self, model: LoadedModel, occurrences: Sequence[ImageParts]) -> list[Any]:
        if not occurrences:
            raise InvalidArgument("no images in the request", field="images")
        return [
            prepare_image(
                model, self._bytes(parts, f"images[{i}]"), self.max_pixels, f"images[{i}]"
            )
            for i, parts in enumerate(occurrences)
        ]

    def _bytes(self, parts: ImageParts, field: str) -> ImageParts:
        """``parts`` with the bytes an Image.shared_memory names in place of its data: a
        read-only view of the region (see tms_server.shm)."""
        if not parts.meta.HasField("shared_memory"):
            return parts
        if memoryview(parts.data).nbytes:
            raise InvalidArgument(
                "an image holds data or shared_memory, not both", field=f"{field}.shared_memory"
            )
        return ImageParts(
            parts.meta, self.regions.view(parts.meta.shared_memory, f"{field}.shared_memory")
        )

    def pixels(self, request_class: type[Message], request: bytes) -> int:
        """The pixels a request's images declare, before anything is decoded (for admission:
        see tms_server.admission); an image whose size cannot be told counts as the largest."""
        try:
            _, images = _read(request_class, request, self.max_batch_size)
        except InvalidArgument:
            return 0  # refused as soon as it runs
        total = 0
        for parts in images:
            try:
                resolved = self._bytes(parts, "image")
            except ServiceError:
                return 0  # refused as soon as it runs
            total += declared_pixels(resolved, unknown=self.max_pixels)
        return total

    def weighers(self) -> dict[str, Callable[[bytes], int]]:
        """``pixels`` for each method whose requests carry images."""
        return _by_raw_request(self.pixels)

    def content(self, request_class: type[Message], request: bytes) -> list[Buffer] | None:
        """What a request's input is made of, the same whether its images are in the request
        or in shared memory (the request then says where, in a region of this worker): its
        message without the images and places, then each image's metadata and bytes. None
        for a request refused as soon as it runs. See tms_server.crashes."""
        try:
            message, images = _read(request_class, request, self.max_batch_size)
            outputs = message.DESCRIPTOR.fields_by_name.get("output_shared_memory")
            if outputs is not None and message.HasField(outputs.name):
                head = type(message)()
                head.CopyFrom(message)  # shared by the calls of one layout: only read
                head.ClearField("output_shared_memory")
                message = head
            content: list[Buffer] = [message.SerializeToString()]
            for parts in images:
                meta = parts.meta
                if meta.HasField("shared_memory"):
                    meta = image_pb2.Image()
                    meta.CopyFrom(parts.meta)
                    meta.ClearField("shared_memory")
                content += [meta.SerializeToString(), self._bytes(parts, "image").data]
        except ServiceError:
            return None
        return content

    def contents(self) -> dict[str, Callable[[bytes], list[Buffer] | None]]:
        """``content`` for each method whose requests carry images."""
        return _by_raw_request(self.content)

    @quick
    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        # Built on each call: an admin may have reloaded a model since. Models placed on
        # other workers are listed too: every worker answers alike.
        registry = self._registry
        return pb.ListModelsResponse(models=registry.infos(), failed=registry.failures())

    @quick
    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetModelInfoResponse:
        return pb.GetModelInfoResponse(info=self._registry.find(request.model).info)

    def RunImage(self, request: bytes, context: grpc.ServicerContext) -> pb.RunImageResponse:
        message, occurrences = _read(pb.RunImageRequest, request, self.max_batch_size)
        received(occurrences)
        model = self._model(message.model, pb.MODEL_CALL_RUN_IMAGE)
        parts = merge_singular(occurrences)
        if parts is None:
            raise InvalidArgument("no image in the request", field="image")
        image = prepare_image(model, self._bytes(parts, "image"), self.max_pixels, "image")
        args = self._args(model, message.args_json)
        if model.batcher is None:
            result = run_model(model, model.instance.run, image, args)
        else:  # run with the calls of the same args gathered meanwhile: tms_server.batching
            batch = functools.partial(run_batch, model, args)
            result = model.batcher.run(image, message.args_json, batch)
        return pb.RunImageResponse(
            result_json=result_json(model, result), model_version=model.info.version
        )

    def RunImageBatch(
        self, request: bytes, context: grpc.ServicerContext
    ) -> pb.RunImageBatchResponse:
        message, occurrences = _read(pb.RunImageBatchRequest, request, self.max_batch_size)
        received(occurrences)
        model = self._model(message.model, pb.MODEL_CALL_RUN_IMAGE_BATCH)
        self._check_batch(model, len(occurrences), "images")
        images = self._images(model, occurrences)
        args = self._args(model, message.args_json)
        return pb.RunImageBatchResponse(
            results_json=[result_json(model, r) for r in run_batch(model, args, images)],
            model_version=model.info.version,
        )

    def RunImageToImage(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        message, occurrences = _read(pb.RunImageToImageRequest, request, self.max_batch_size)
        received(occurrences)
        model = self._model(message.model, pb.MODEL_CALL_RUN_IMAGE_TO_IMAGE)
        if message.output_encoding not in (
            image_pb2.ENCODING_UNSPECIFIED,
            image_pb2.ENCODING_RAW,
            image_pb2.ENCODING_PNG,
        ):
            raise InvalidArgument("output_encoding must be RAW or PNG", field="output_encoding")
        images = self._images(model, occurrences)
        args = self._args(model, message.args_json)
        output = run_model(model, model.instance.run_image_to_image, images, args)
        arrays, result = image_outputs(model, output)
        parts = [encode_output(model, a, message.output_encoding) for a in arrays]
        if message.HasField("output_shared_memory"):
            parts = self._lend_outputs(parts, message.output_shared_memory)
        head = pb.RunImageToImageResponse(
            result_json=result_json(model, result), model_version=model.info.version
        )
        return join_images(head, OUTPUT_FIELD, parts)

    def RunText(
        self, request: pb.RunTextRequest, context: grpc.ServicerContext
    ) -> pb.RunTextResponse:
        model = self._model(request.model, pb.MODEL_CALL_RUN_TEXT)
        args = self._args(model, request.args_json)
        result = run_model(model, model.instance.run, request.text, args)
        return pb.RunTextResponse(
            result_json=result_json(model, result), model_version=model.info.version
        )

    def RunTextBatch(
        self, request: pb.RunTextBatchRequest, context: grpc.ServicerContext
    ) -> pb.RunTextBatchResponse:
        model = self._model(request.model, pb.MODEL_CALL_RUN_TEXT_BATCH)
        self._check_batch(model, len(request.texts), "texts")
        texts = list(request.texts)
        if not texts:
            raise InvalidArgument("no texts in the request", field="texts")
        args = self._args(model, request.args_json)
        return pb.RunTextBatchResponse(
            results_json=[result_json(model, r) for r in run_batch(model, args, texts)],
            model_version=model.info.version,
        )

    def _lend_outputs(
        self, parts: list[ImageParts], where: image_pb2.SharedMemory
    ) -> list[ImageParts]:
        """Output images written one after another into the span ``where`` names, as
        references to it; those that do not fit stay bytes."""
        span = self.regions.span(where, "output_shared_memory")
        placed, offset = [], 0
        for image in parts:
            data = memoryview(image.data).cast("B")
            if offset + data.nbytes > span.nbytes:
                placed.append(image)
                continue
            span[offset : offset + data.nbytes] = data
            meta = image_pb2.Image()
            meta.CopyFrom(image.meta)
            meta.shared_memory.region = where.region
            meta.shared_memory.offset = where.offset + offset
            meta.shared_memory.size = data.nbytes
            placed.append(ImageParts(meta, b""))
            offset += data.nbytes
        return placed

    @quick
    def GetWorkerInfo(
        self, request: pb.GetWorkerInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetWorkerInfoResponse:
        # The models this worker serves, as of now (a reload may move one). An empty list
        # would mean "every model" (older servers send none), so a worker that serves none
        # while it knows of some (placed elsewhere, or failed to load) sends [""], which names
        # no model.
        # The reload before the models: a reload between the two then makes the client ask
        # once more, rather than keep the models it replaced.
        reload = self.load.reload
        registry = self._registry
        models = registry.here() or ([""] if registry.elsewhere or registry.failed else [])
        response = pb.GetWorkerInfoResponse()
        response.CopyFrom(self._worker_info)
        response.models.extend(models)
        response.reload = reload
        return response

    @raw
    def RunImageStream(
        self, stream: Stream[bytes], context: grpc.ServicerContext
    ) -> AsyncIterator[pb.RunImageStreamResponse]:
        # Each frame as RunImage takes its request (tms_server.streams), its image in bytes
        # or in shared memory; the stream's model must take RunImage.
        return image_stream(
            stream,
            lambda name: self._model(
                name, pb.MODEL_CALL_RUN_IMAGE, asked="RunImageStream (each frame a RunImage call)"
            ),
            self._args,
            self._bytes,
            self.max_pixels,
        )

    @quick
    def AttachSharedMemory(
        self, request: pb.AttachSharedMemoryRequest, context: grpc.ServicerContext
    ) -> pb.AttachSharedMemoryResponse:
        region = self.regions.attach(request.name, request.size, request.proof)
        return pb.AttachSharedMemoryResponse(region=region)

    @quick
    def DetachSharedMemory(
        self, request: pb.DetachSharedMemoryRequest, context: grpc.ServicerContext
    ) -> pb.DetachSharedMemoryResponse:
        self.regions.detach(request.region)
        return pb.DetachSharedMemoryResponse()
