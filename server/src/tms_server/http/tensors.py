"""Open Inference Protocol REST bodies as the messages the OIP servicer takes, and back.

A request body is JSON (``inputs``, ``outputs``, ``parameters``, ``id``), its tensors' ``data``
flat or nested in row-major order; with the binary tensor data extension the JSON is the
first ``Inference-Header-Content-Length`` bytes and each input with a ``binary_data_size``
parameter takes its bytes, in turn, from the rest (BYTES elements each prefixed by their
length, 4 bytes little-endian, as in the gRPC form). Outputs go back as JSON ``data``, or as
binary after the JSON when asked (``binary_data`` on an output, ``binary_data_output`` on the
request, which an output's own ``binary_data`` overrides).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tms_client.protocol.codec import numpy_dtype
from tms_client.protocol.wire import Buffer
from tms_server._gen.inference import grpc_predict_v2_pb2 as oip
from tms_server.errors import InvalidArgument, Reason
from tms_server.limits import not_json
from tms_server.oip.tensors import BYTES, TMS_DTYPES, pack_bytes, unpack_bytes

__all__ = [
    "HEADER_LENGTH",
    "InferRequest",
    "check_json_size",
    "declared_input",
    "infer_response",
    "parse_infer",
    "tensor_values",
    "to_json",
]

#: The header of the binary tensor data extension: the length of the JSON part of a body.
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass
class InferRequest:
    """A REST inference request as the gRPC message, and which outputs go back binary."""

    message: oip.ModelInferRequest
    binary_outputs: set[str] = field(default_factory=set)
    json_outputs: set[str] = field(default_factory=set)  # binary_data false: over the default
    binary_by_default: bool = False

    def binary(self, name: str) -> bool:
        if name in self.json_outputs:
            return False
        return name in self.binary_outputs or self.binary_by_default


def parse_infer(
    name: str,
    version: str,
    body: bytes,
    header_length: str | None,
    *,
    max_inputs: int = 1,
    max_outputs: int = 2,
) -> InferRequest:
    """The request ``body`` for model ``name`` (``version``; "" for the default one), with
    ``header_length`` the binary extension's header if given; InvalidArgument if malformed.

    A model takes one input (IMAGE or TEXT) and has at most two outputs (RESULT and
    OUTPUT_IMAGE): a body listing more than ``max_inputs`` or ``max_outputs`` is refused
    before its tensors are read. Reading them holds the GIL, and so the worker's event loop:
    100,000 tiny inputs took 2 s of it.
    """
    head, rest = _split(body, header_length)
    document = _object(_json(head), "the request")
    _at_most(document, "inputs", max_inputs, f"model {name!r} takes one input (IMAGE, or TEXT)")
    _at_most(
        document,
        "outputs",
        max_outputs,
        f"model {name!r} has the outputs RESULT and, if it returns an image, OUTPUT_IMAGE",
    )
    message = oip.ModelInferRequest(model_name=name, model_version=version)
    if "id" in document:
        message.id = _text(document["id"], "id")
    _parameters(message.parameters, document.get("parameters"), "parameters")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgument("the request needs 'inputs', a list of tensors", field="inputs")
    offset = 0
    for index, item in enumerate(inputs):
        where = f"inputs[{index}]"
        tensor = _object(item, where)
        datatype = _text(tensor.get("datatype"), f"{where}.datatype")
        shape = _shape(tensor.get("shape"), f"{where}.shape")
        params = dict(_object(tensor.get("parameters") or {}, f"{where}.parameters"))
        size = params.pop("binary_data_size", None)
        added = message.inputs.add(
            name=_text(tensor.get("name"), f"{where}.name"), datatype=datatype, shape=shape
        )
        _parameters(added.parameters, params, f"{where}.parameters")
        if size is None:
            data = _data(tensor.get("data"), datatype, shape, f"{where}.data")
        else:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidArgument("binary_data_size must be a count of bytes", field=where)
            if offset + size > len(rest):
                raise InvalidArgument(
                    f"{where} has binary_data_size {size}, past the end of the binary data "
                    f"({len(rest) - offset} bytes left)",
                    field=where,
                )
            data, offset = rest[offset : offset + size], offset + size
        message.raw_input_contents.append(data)
    if offset != len(rest):
        raise InvalidArgument(
            f"the body holds {len(rest) - offset} bytes of binary data that no input's "
            "binary_data_size claims"
        )
    return _outputs(InferRequest(message), document)


#: The largest JSON header ``declared_input`` reads (on the event loop: it must be quick).
DECLARED_HEADER_BYTES = 64 * 1024


def declared_input(body: bytes, header_length: str) -> tuple[str, list[int]] | None:
    """The datatype and shape of the first input a binary body's JSON header declares (its
    data follows the header), or None if it does not tell: a header that is malformed (the
    call is refused when it runs) or over DECLARED_HEADER_BYTES."""
    try:
        head, _ = _split(body, header_length)
        if len(head) > DECLARED_HEADER_BYTES:
            return None
        inputs = _list(_object(_json(head), "the request").get("inputs"), "inputs")
        tensor = _object(inputs[0] if inputs else None, "inputs[0]")
        return str(tensor.get("datatype")), _shape(tensor.get("shape"), "inputs[0].shape")
    except InvalidArgument:
        return None


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON and the binary part of a body."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise InvalidArgument(
            f"{HEADER_LENGTH} must be the length of the JSON part of the body "
            f"(0 to {len(body)}), not {header_length!r}"
        )
    return body[:length], body[length:]


def _at_most(document: Mapping[str, Any], key: str, most: int, takes: str) -> None:
    items = document.get(key)
    if isinstance(items, list) and len(items) > most:
        raise InvalidArgument(f"{takes}; the request lists {len(items)} in '{key}'", field=key)


def _outputs(request: InferRequest, document: Mapping[str, Any]) -> InferRequest:
    """The outputs ``document`` asks for, and which of them go back binary."""
    params = _object(document.get("parameters") or {}, "parameters")
    request.binary_by_default = params.get("binary_data_output") is True
    for index, item in enumerate(_list(document.get("outputs", []), "outputs")):
        output = _object(item, f"outputs[{index}]")
        wanted = _text(output.get("name"), f"outputs[{index}].name")
        request.message.outputs.add(name=wanted)
        binary = _object(output.get("parameters") or {}, "parameters").get("binary_data")
        if binary is True:
            request.binary_outputs.add(wanted)
        elif binary is False:  # JSON, even with binary_data_output: an output's own word wins
            request.json_outputs.add(wanted)
    return request


def check_json_size(name: str, size: int, max_bytes: int, instead: str) -> None:
    """IMAGE_TOO_LARGE (413) when output ``name``, ``size`` bytes at least as JSON, would be
    longer than ``max_bytes`` (--max-message-mb), told before the JSON is made: a number takes
    two bytes of JSON at least, and many times that in memory on the way."""
    if size > max_bytes:
        raise InvalidArgument(
            f"output {name} takes {size} bytes or more as JSON, over the {max_bytes >> 20} MiB "
            f"an answer may be (--max-message-mb); {instead} or send a smaller image",
            reason=Reason.IMAGE_TOO_LARGE,
            field=f"outputs.{name}",
        )


def infer_response(
    request: InferRequest, response: oip.ModelInferResponse, max_bytes: int
) -> tuple[bytes, int]:
    """The REST body of ``response``, and the length of its JSON part (the whole body unless
    some outputs go binary); IMAGE_TOO_LARGE (413) when an output as JSON would be longer
    than ``max_bytes`` (check_json_size)."""
    outputs, blobs = [], []
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if not request.binary(tensor.name) and tensor.datatype != BYTES:
            check_json_size(
                tensor.name,
                2 * math.prod(tensor.shape),
                max_bytes,
                'ask for it as binary data (parameters {"binary_data": true})',
            )
        item: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if request.binary(tensor.name):
            item["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            item["data"] = tensor_values(tensor.datatype, list(tensor.shape), raw)
        outputs.append(item)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id:
        document["id"] = response.id
    head = to_json(document)
    return head + b"".join(blobs), len(head)


def to_json(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def _json(text: bytes) -> Any:
    try:
        return json.loads(text, parse_constant=not_json)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"the request body is not valid JSON: {exc}") from None


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object", field=what)
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidArgument(f"{what} must be a JSON list", field=what)
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string", field=what)
    return value


#: The most dimensions a tensor may have (an image has 4 at most).
MAX_DIMENSIONS = 8


def _shape(value: Any, what: str) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_DIMENSIONS
        or not all(
            isinstance(dim, int) and not isinstance(dim, bool) and 0 <= dim < 2**31 for dim in value
        )
    ):
        raise InvalidArgument(
            f"{what} must be a list of at most {MAX_DIMENSIONS} sizes (integers >= 0)", field=what
        )
    return value


def _parameters(target: Any, values: Any, what: str) -> None:
    """JSON parameters into a map of InferParameter; an object or list (``args``, say) goes
    as its JSON text, which is how the OIP servicer takes ``args``."""
    for key, value in _object(values or {}, what).items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise InvalidArgument(f"{what}.{key} is out of range", field=f"{what}.{key}")
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        elif isinstance(value, str):
            param.string_param = value
        elif isinstance(value, dict | list):
            param.string_param = json.dumps(value)
        else:
            raise InvalidArgument(f"{what}.{key} cannot be null", field=f"{what}.{key}")


def _data(values: Any, datatype: str, shape: list[int], what: str) -> bytes:
    """A tensor's JSON ``data`` as raw bytes (little-endian, row-major)."""
    count = math.prod(shape)
    if values is None:
        raise InvalidArgument(f"{what} is missing (or give binary_data_size)", field=what)
    if datatype == BYTES:
        items = _flat(values, what)
        if not all(isinstance(item, str) for item in items):
            raise InvalidArgument(f"{what} of BYTES must hold strings", field=what)
        data = [item.encode("utf-8", "surrogatepass") for item in items]
        _count(len(data), count, shape, what)
        return pack_bytes(data)
    dtype = TMS_DTYPES.get(datatype)
    if dtype is None:
        known = ", ".join([*TMS_DTYPES, BYTES])
        raise InvalidArgument(f"datatype {datatype!r} is not one of {known}", field=what)
    target = numpy_dtype(dtype)
    try:
        array = np.asarray(values)
    except ValueError:
        raise InvalidArgument(f"{what} is not a list of numbers in row-major order") from None
    kinds = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}[target.kind]
    if array.size and array.dtype.kind not in kinds:  # numpy makes an empty list float64
        wanted = {"b": "true or false", "i": "integers", "u": "integers", "f": "numbers"}
        raise InvalidArgument(f"{what} must hold {wanted[target.kind]} for {datatype}", field=what)
    _count(array.size, count, shape, what)
    if target.kind in "iu" and array.size:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidArgument(f"{what} has a value out of range for {datatype}", field=what)
    cast = array.astype(target.newbyteorder("<"))
    if target.kind == "f" and not np.isfinite(cast).all():  # past FP16/FP32's range
        raise InvalidArgument(f"{what} has a value out of range for {datatype}", field=what)
    return cast.tobytes()


def _flat(values: Any, what: str) -> list[Any]:
    flat: list[Any] = []
    stack = [iter(_list(values, what))]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > 8:
                    raise InvalidArgument(f"{what} nests too deep", field=what)
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _count(found: int, count: int, shape: list[int], what: str) -> None:
    if found != count:
        raise InvalidArgument(
            f"{what} holds {found} elements; shape {shape} needs {count}", field=what
        )


def tensor_values(datatype: str, shape: list[int], raw: Buffer) -> list[Any]:
    """An output's raw bytes as a flat JSON list (BYTES as text: TMS outputs are JSON)."""
    if datatype == BYTES:
        return [item.decode("utf-8", "replace") for item in unpack_bytes(raw, math.prod(shape))]
    dtype = numpy_dtype(TMS_DTYPES[datatype]).newbyteorder("<")
    values: list[Any] = np.frombuffer(raw, dtype).tolist()
    return values
