"""``inference.GRPCInferenceService`` for the models of a tms.v1 servicer (see the package)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy.typing as npt

from tms.v1 import image_pb2
from tms_client.protocol.codec import numpy_dtype
from tms_client.protocol.colors import ColorValue, color_order
from tms_client.protocol.wire import (
    LENGTH_DELIMITED,
    Buffer,
    ImageParts,
    WireError,
    fields,
    read_varint,
)
from tms_server import __version__
from tms_server._gen.inference import grpc_predict_v2_pb2 as oip
from tms_server.errors import Internal, InvalidArgument, NotFound, Reason
from tms_server.health import HealthServicer

# The tms.v1 servicer's input checks and model calls, shared so both APIs behave alike.
from tms_server.invoke import (
    CHANNELS,
    encode_output,
    image_outputs,
    prepare_image,
    result_json,
    run_batch,
    run_model,
)
from tms_server.limits import check_args, parse_args
from tms_server.oip.models import PLATFORM, VERSION, DescribedModel
from tms_server.oip.tensors import (
    BYTES,
    CONFIG_TYPES,
    DATATYPES,
    IMAGE,
    OUTPUT_IMAGE,
    RESULT,
    TEXT,
    TMS_DTYPES,
    OutputTensor,
    Tensor,
    TensorMetadata,
    pack_bytes,
    string_param,
    typed_contents,
    unpack_bytes,
)
from tms_server.registry import LoadedModel, ModelRegistry
from tms_server.rpc import quick
from tms_server.servicer import ModelServicer, check_admitted

__all__ = ["SERVICE", "SERVICE_NAME", "InferenceServicer"]

SERVICE = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"]
#: Full name of the service, for reflection and health.
SERVICE_NAME = SERVICE.full_name


class InferenceServicer:
    """Serves ``inference.GRPCInferenceService`` for the models of a tms.v1 servicer.

    It shares that servicer's input checks and model calls, so a call made either way is
    validated and run alike.
    """

    def __init__(
        self, models: ModelServicer, registry: ModelRegistry, health: HealthServicer | None = None
    ) -> None:
        self._models = models
        self._registry = registry
        self._health = health  # ServerReady says what it says for the server as a whole

    def described(self, name: str, version: str, *, here: bool = False) -> DescribedModel:
        """Model ``name`` as OIP describes it; ``here``: loaded in this worker (to run it),
        else it may be placed on other workers (to describe it)."""
        if here:
            model = self._registry.get(name)
            check_admitted(name, "model_name")
        else:
            model = self._registry.find(name)
        if version not in ("", VERSION):
            raise NotFound(
                f"model {name!r} has no version {version!r}; its one version is 1",
                metadata={"version": version},
            )
        return DescribedModel(model)

    @quick
    def ServerLive(
        self, request: oip.ServerLiveRequest, context: grpc.ServicerContext
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    @quick
    def ServerReady(
        self, request: oip.ServerReadyRequest, context: grpc.ServicerContext
    ) -> oip.ServerReadyResponse:
        ready = self._health is None or self._health.serving()
        return oip.ServerReadyResponse(ready=ready)

    @quick
    def ModelReady(
        self, request: oip.ModelReadyRequest, context: grpc.ServicerContext
    ) -> oip.ModelReadyResponse:
        ready = request.name in self._registry.models and request.version in ("", VERSION)
        return oip.ModelReadyResponse(ready=ready)

    @quick
    def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(
            name="tms", version=__version__, extensions=["model_configuration", "parameters"]
        )

    @quick
    def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> oip.ModelMetadataResponse:
        described = self.described(request.name, request.version)
        name = TEXT if described.text else IMAGE
        return oip.ModelMetadataResponse(
            name=request.name,
            versions=[VERSION],
            platform=PLATFORM,
            inputs=[
                TensorMetadata(
                    name=name,
                    datatype=described.input_datatype,
                    shape=[-1, *described.input_dims()],
                )
            ],
            outputs=[
                TensorMetadata(name=out, datatype=datatype, shape=[-1, *dims])
                for out, datatype, dims in described.outputs()
            ],
        )

    @quick
    def ModelConfig(
        self, request: oip.ModelConfigRequest, context: grpc.ServicerContext
    ) -> oip.ModelConfigResponse:
        described = self.described(request.name, request.version)
        model_input = oip.ModelInput(
            name=TEXT if described.text else IMAGE,
            data_type=CONFIG_TYPES[described.input_datatype],
            format=oip.ModelInput.FORMAT_NONE if described.text else oip.ModelInput.FORMAT_NHWC,
            dims=described.input_dims(),
        )
        config = oip.ModelConfig(
            name=request.name,
            platform=PLATFORM,
            backend="python",
            max_batch_size=self._models.batch_limit(described.model)[0],
            input=[model_input],
            output=[
                oip.ModelOutput(name=out, data_type=CONFIG_TYPES[datatype], dims=dims)
                for out, datatype, dims in described.outputs()
            ],
        )
        return oip.ModelConfigResponse(config=config)

    def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.ServicerContext
    ) -> oip.ModelInferResponse:
        described = self.described(request.model_name, request.model_version, here=True)
        tensor, raw = self._input(request, TEXT if described.text else IMAGE)
        args = parse_args(string_param(request.parameters, "args") or "", "parameters.args")
        check_args(described.model.args_validator, args, "parameters.args")
        wanted = [output.name for output in request.outputs]
        known = [name for name, _, _ in described.outputs()]
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise InvalidArgument(
                f"model {request.model_name!r} has no output {unknown[0]!r}; "
                f"its outputs are {', '.join(known)}",
                field="outputs",
            )
        model = described.model
        if described.text:
            outputs = self._run_text(model, tensor, raw, args)
        else:
            images, batched = self._images(model, tensor, raw, request.parameters)
            if described.image_to_image and (not described.runs or wanted != [RESULT]):
                outputs = self._run_image_to_image(model, images, batched, args)
            else:
                outputs = _run_images(model, images, batched, args)
        if wanted:
            outputs = [output for output in outputs if output[0].name in wanted]
        return oip.ModelInferResponse(
            model_name=request.model_name,
            model_version=VERSION,
            id=request.id,
            outputs=[output for output, _ in outputs],
            raw_output_contents=[data for _, data in outputs],
        )

    @staticmethod
    def _input(request: oip.ModelInferRequest, name: str) -> tuple[Tensor, Buffer]:
        """The request's one input tensor and its elements as raw bytes."""
        if len(request.inputs) != 1:
            raise InvalidArgument(
                f"model {request.model_name!r} takes one input, {name}; "
                f"the request has {len(request.inputs)}",
                field="inputs",
            )
        tensor = request.inputs[0]
        if tensor.name != name:
            raise InvalidArgument(
                f"model {request.model_name!r} takes an input named {name}, not {tensor.name!r}",
                field="inputs[0].name",
            )
        if any(dim < 0 for dim in tensor.shape):
            raise InvalidArgument(
                f"input shape {list(tensor.shape)} has a negative dimension",
                field="inputs[0].shape",
            )
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise InvalidArgument(
                    "raw_input_contents must hold one entry per input", field="raw_input_contents"
                )
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    "an input is given both in contents and raw_input_contents",
                    field="inputs[0].contents",
                )
            return tensor, request.raw_input_contents[0]
        return tensor, typed_contents(tensor)

    def _images(
        self,
        model: LoadedModel,
        tensor: Tensor,
        raw: Buffer,
        params: Mapping[str, oip.InferParameter],
    ) -> tuple[list[npt.NDArray[Any]], bool]:
        """The images of an IMAGE tensor as the model takes them, and whether it was a batch."""
        shape = [int(dim) for dim in tensor.shape]
        if len(shape) not in (2, 3, 4):
            raise InvalidArgument(
                f"input IMAGE has shape {shape}; expected [H, W, C], [H, W] or [N, H, W, C]",
                reason=Reason.INVALID_IMAGE,
                field="inputs[0].shape",
            )
        dtype = TMS_DTYPES.get(tensor.datatype)
        if dtype is None:
            raise InvalidArgument(
                f"input IMAGE has datatype {tensor.datatype!r}; expected one of "
                f"{', '.join(TMS_DTYPES)}",
                reason=Reason.INVALID_IMAGE,
                field="inputs[0].datatype",
            )
        batched = len(shape) == 4
        count, image_shape = (shape[0], shape[1:]) if batched else (1, shape)
        if batched:
            self._check_batch(model, count, "images")
        size = math.prod(image_shape) * numpy_dtype(dtype).itemsize
        view = memoryview(raw)
        if view.nbytes != count * size:
            raise InvalidArgument(
                f"input IMAGE has {view.nbytes} bytes of data; shape {shape} of "
                f"{tensor.datatype} needs {count * size}",
                reason=Reason.INVALID_IMAGE,
                field="inputs[0]",
            )
        color = _color(model, tensor, params, image_shape)
        meta = image_pb2.Image(
            dtype=dtype, shape=image_shape, color_order=color, encoding=image_pb2.ENCODING_RAW
        )
        images = [
            prepare_image(
                model,
                ImageParts(meta, view[i * size : (i + 1) * size]),
                self._models.max_pixels,
                "inputs[0]",
            )
            for i in range(count)
        ]
        return images, batched

    def _run_image_to_image(
        self,
        model: LoadedModel,
        images: list[npt.NDArray[Any]],
        batched: bool,
        args: dict[str, Any],
    ) -> list[tuple[OutputTensor, bytes]]:
        output = run_model(model, model.instance.run_image_to_image, images, args)
        arrays, result = image_outputs(model, output)
        if not arrays:
            raise Internal(f"model {model.name!r} returned no image", reason=Reason.MODEL_FAILED)
        parts = [encode_output(model, a, image_pb2.ENCODING_RAW) for a in arrays]
        first = parts[0].meta
        if any(p.meta.shape != first.shape or p.meta.dtype != first.dtype for p in parts):
            raise Internal(
                f"model {model.name!r} returned images of different shapes or dtypes, "
                "which one tensor cannot hold",
                reason=Reason.MODEL_FAILED,
            )
        shape = list(first.shape)
        if batched or len(parts) > 1:
            shape = [len(parts), *shape]
        image = OutputTensor(name=OUTPUT_IMAGE, datatype=DATATYPES[first.dtype], shape=shape)
        json_result = OutputTensor(name=RESULT, datatype=BYTES, shape=[1])
        return [
            (image, b"".join(bytes(p.data) for p in parts)),
            (json_result, pack_bytes([result_json(model, result).encode()])),
        ]

    def _run_text(
        self, model: LoadedModel, tensor: Tensor, raw: Buffer, args: dict[str, Any]
    ) -> list[tuple[OutputTensor, bytes]]:
        shape = [int(dim) for dim in tensor.shape]
        if tensor.datatype != BYTES or not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InvalidArgument(
                f"input TEXT must be BYTES of shape [N] or [N, 1], not {tensor.datatype} {shape}",
                field="inputs[0]",
            )
        self._check_batch(model, shape[0], "texts")
        try:
            texts = [item.decode() for item in unpack_bytes(raw, shape[0])]
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"input TEXT is not UTF-8: {exc}", field="inputs[0]") from None
        results = run_batch(model, args, texts)
        data = pack_bytes([result_json(model, result).encode() for result in results])
        return [(OutputTensor(name=RESULT, datatype=BYTES, shape=shape), data)]

    def _check_batch(self, model: LoadedModel, count: int, what: str) -> None:
        """1 to the model's batch limit (see ModelServicer.batch_limit) of ``what``."""
        most, source = self._models.batch_limit(model)
        if not 1 <= count <= most:
            raise InvalidArgument(
                f"a batch holds 1 to {most} {what} ({source}), not {count}",
                reason=Reason.BATCH_TOO_LARGE if count > most else Reason.INVALID_REQUEST,
                field="inputs[0].shape",
            )


_INPUTS = oip.ModelInferRequest.DESCRIPTOR.fields_by_name["inputs"].number
_TENSOR = oip.ModelInferRequest.InferInputTensor.DESCRIPTOR.fields_by_name
_DATATYPE, _SHAPE = _TENSOR["datatype"].number, _TENSOR["shape"].number
_CONTENTS = _TENSOR["contents"].number


def declared_pixels(request: bytes) -> int:
    """The pixels (N x H x W) the image input of a ModelInferRequest declares by its shape,
    read from the wire without parsing or copying any data, for the worker's admission
    (--max-pixels-in-flight, see tms_server.admission); 0 for a text input, or for a request
    that cannot tell (it is refused as soon as it runs)."""
    view = memoryview(request)
    try:
        for number, wire_type, _, start, end in fields(view):
            if number == _INPUTS and wire_type == LENGTH_DELIMITED:
                return _tensor_pixels(view[start:end])
    except WireError:
        pass
    return 0


def _tensor_pixels(tensor: memoryview) -> int:
    """N x H x W by its shape, or the length of its typed ``contents`` if that is more: each
    value takes a byte on the wire at least, and eight (or a Python object) when it is read.
    Text (BYTES) weighs its contents' length: it holds no pixels, but as much memory."""
    datatype, shape, contents = "", [], 0
    for number, wire_type, _, start, end in fields(tensor):
        if number == _CONTENTS:
            contents += end - start
        elif number == _DATATYPE:
            datatype = bytes(tensor[start:end]).decode(errors="replace")
        elif number == _SHAPE and wire_type == LENGTH_DELIMITED:  # packed, as protobuf writes it
            packed, pos = tensor[:end], start
            while pos < end:
                dim, pos = read_varint(packed, pos)
                shape.append(dim)
        elif number == _SHAPE:
            shape.append(read_varint(tensor, start)[0])
    return max(input_pixels(datatype, shape), contents)


def input_pixels(datatype: str, shape: Sequence[int]) -> int:
    """What an input of ``datatype`` and ``shape`` weighs against --max-pixels-in-flight: N x H
    x W of an image ([N, H, W, C], [H, W, C] or [H, W]); 0 for text (BYTES), which holds no
    pixels, and for a shape the call refuses (a negative dimension read from the wire is huge)."""
    if datatype == BYTES:
        return 0
    if len(shape) not in (2, 3, 4) or not all(0 <= dim < 1 << 31 for dim in shape):
        return 0
    return math.prod(shape[:3]) if len(shape) == 4 else shape[0] * shape[1]


def _color(
    model: LoadedModel,
    tensor: Tensor,
    params: Mapping[str, oip.InferParameter],
    shape: list[int],
) -> ColorValue:
    """The colour order of an input: the ``color_order`` parameter of the tensor or else of the
    request, else the model's when the channel count agrees, else gray for one channel, else
    unspecified (which the model's checks reject when it needs a colour order)."""
    name = string_param(tensor.parameters, "color_order")
    if name is None:
        name = string_param(params, "color_order")
    if name is not None:
        try:
            return color_order(name)
        except ValueError as exc:
            raise InvalidArgument(str(exc), field="parameters.color_order") from None
    channels = 1 if len(shape) == 2 else shape[2]
    if CHANNELS.get(model.color) == channels:
        return model.color
    return image_pb2.COLOR_ORDER_GRAY if channels == 1 else image_pb2.COLOR_ORDER_UNSPECIFIED


def _run_images(
    model: LoadedModel, images: list[npt.NDArray[Any]], batched: bool, args: dict[str, Any]
) -> list[tuple[OutputTensor, bytes]]:
    """RESULT of ``run`` on one image, or of ``run_batch`` on a batch."""
    if batched:
        results, shape = run_batch(model, args, images), [len(images), 1]
    else:
        results, shape = [run_model(model, model.instance.run, images[0], args)], [1]
    texts = [result_json(model, result).encode() for result in results]
    return [(OutputTensor(name=RESULT, datatype=BYTES, shape=shape), pack_bytes(texts))]
