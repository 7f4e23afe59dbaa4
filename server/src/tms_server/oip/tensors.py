"""Tensors of the Open Inference Protocol as TMS reads and writes them: datatype names, the
raw encoding of BYTES elements, typed contents as raw bytes."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import numpy as np

from tms.v1 import image_pb2
from tms_client.protocol.codec import numpy_dtype
from tms_client.protocol.wire import Buffer
from tms_server._gen.inference import grpc_predict_v2_pb2 as oip
from tms_server.errors import InvalidArgument

__all__ = [
    "BYTES",
    "CONFIG_TYPES",
    "DATATYPES",
    "IMAGE",
    "OUTPUT_IMAGE",
    "RESULT",
    "TEXT",
    "TMS_DTYPES",
    "OutputTensor",
    "Tensor",
    "TensorMetadata",
    "pack_bytes",
    "string_param",
    "typed_contents",
    "unpack_bytes",
]

IMAGE, TEXT, RESULT, OUTPUT_IMAGE = "IMAGE", "TEXT", "RESULT", "OUTPUT_IMAGE"
BYTES = "BYTES"

# OIP datatype names of the element types TMS images hold.
DATATYPES: dict[image_pb2.DType.ValueType, str] = {
    image_pb2.D_TYPE_BOOL: "BOOL",
    image_pb2.D_TYPE_UINT8: "UINT8",
    image_pb2.D_TYPE_INT8: "INT8",
    image_pb2.D_TYPE_UINT16: "UINT16",
    image_pb2.D_TYPE_INT16: "INT16",
    image_pb2.D_TYPE_INT32: "INT32",
    image_pb2.D_TYPE_INT64: "INT64",
    image_pb2.D_TYPE_FLOAT16: "FP16",
    image_pb2.D_TYPE_FLOAT32: "FP32",
    image_pb2.D_TYPE_FLOAT64: "FP64",
}
TMS_DTYPES = {name: dtype for dtype, name in DATATYPES.items()}
# Model-configuration enum of each datatype name: TYPE_ and the name, TYPE_STRING for BYTES.
CONFIG_TYPES: dict[str, oip.DataType.ValueType] = {
    **{name: oip.DataType.Value(f"TYPE_{name}") for name in DATATYPES.values()},
    BYTES: oip.TYPE_STRING,
}
# The typed field of InferTensorContents that holds each datatype.
_CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}

Tensor = oip.ModelInferRequest.InferInputTensor
OutputTensor = oip.ModelInferResponse.InferOutputTensor
TensorMetadata = oip.ModelMetadataResponse.TensorMetadata


_DATA = "inputs[0]"  # the input's elements, in contents or raw_input_contents


def pack_bytes(items: Sequence[bytes]) -> bytes:
    """BYTES elements as raw contents: each prefixed by its length, 4 bytes little-endian."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def unpack_bytes(raw: Buffer, count: int) -> list[bytes]:
    view, items, pos = memoryview(raw), [], 0
    for _ in range(count):
        if pos + 4 > len(view):
            raise InvalidArgument(f"BYTES input holds fewer than {count} elements", field=_DATA)
        (size,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if pos + size > len(view):
            raise InvalidArgument("BYTES input element runs past the end of the data", field=_DATA)
        items.append(bytes(view[pos : pos + size]))
        pos += size
    if pos != len(view):
        raise InvalidArgument(f"BYTES input holds more than {count} elements", field=_DATA)
    return items


def string_param(params: Mapping[str, oip.InferParameter], name: str) -> str | None:
    if name not in params:
        return None
    param = params[name]
    if param.WhichOneof("parameter_choice") != "string_param":
        raise InvalidArgument(f"parameter {name!r} must be a string", field=f"parameters.{name}")
    return param.string_param


def typed_contents(tensor: Tensor) -> bytes:
    """The typed ``contents`` of an input as raw bytes (little-endian, row-major)."""
    field = _CONTENTS_FIELDS.get(tensor.datatype)
    if field is None:
        raise InvalidArgument(
            f"input {tensor.name} of datatype {tensor.datatype!r} must come in raw_input_contents",
            field="inputs[0].contents",
        )
    values = getattr(tensor.contents, field)
    # Told before they are copied out (eight bytes a value, or a Python object each for BYTES,
    # and as many again on the way).
    expected = 1
    for dim in tensor.shape:
        expected *= max(dim, 0)
        if expected > len(values):
            break
    if len(values) != expected:
        raise InvalidArgument(
            f"input {tensor.name} holds {len(values)} values in contents, not what its shape "
            f"{list(tensor.shape)[:8]} needs",
            field="inputs[0].contents",
        )
    if tensor.datatype == BYTES:
        return pack_bytes(list(values))
    dtype = numpy_dtype(TMS_DTYPES[tensor.datatype])
    try:
        array = np.array(values, dtype=np.float64 if dtype.kind == "f" else np.int64)
        if dtype.kind in "iu" and array.size:
            info = np.iinfo(dtype)
            if array.min() < info.min or array.max() > info.max:
                raise ValueError(f"a value is out of range for {tensor.datatype}")
        return array.astype(dtype).tobytes()
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(f"input {tensor.name}: {exc}", field="inputs[0].contents") from None
