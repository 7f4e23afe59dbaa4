"""What the Open Inference Protocol says about a TMS model: its tensors and the call it runs."""

from __future__ import annotations

from tms.v1 import image_pb2, model_service_pb2
from tms_server.invoke import CHANNELS
from tms_server.oip.tensors import BYTES, DATATYPES, OUTPUT_IMAGE, RESULT
from tms_server.registry import LoadedModel

__all__ = ["PLATFORM", "VERSION", "DescribedModel"]

#: The one version of every model, and the platform name ModelMetadata reports.
VERSION = "1"
PLATFORM = "tms"

pb = model_service_pb2


class DescribedModel:
    """What the OIP side says about one TMS model: its tensors and which call it runs."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.text = pb.MODEL_CALL_RUN_TEXT in model.info.calls
        self.runs = model.supports(pb.MODEL_CALL_RUN_IMAGE)
        self.image_to_image = model.supports(pb.MODEL_CALL_RUN_IMAGE_TO_IMAGE)
        dtype = model.info.input_dtype
        self.input_datatype = BYTES if self.text else DATATYPES.get(dtype, "UINT8")

    def input_dims(self) -> list[int]:
        """The input's shape without the batch dimension; -1 where any size goes."""
        if self.text:
            return [1]
        shape = list(self.model.input_shape or ())
        if len(shape) == 3:
            return shape
        height, width = [*shape, -1, -1][:2]
        return [height, width, CHANNELS.get(self.model.color, -1)]

    def outputs(self) -> list[tuple[str, str, list[int]]]:
        """(name, datatype, shape without the batch dimension) of each output."""
        outputs = []
        if self.image_to_image:
            # The model declares no output dtype: images of a colour order are taken to be of
            # the input's type, other arrays (flow fields, maps) FP32. Responses say the truth.
            color = self.model.output_color
            if color == image_pb2.COLOR_ORDER_UNSPECIFIED:
                datatype, dims = "FP32", [-1, -1, -1]
            else:
                datatype = self.input_datatype
                channels = CHANNELS[color]
                dims = [-1, -1] if channels == 1 else [-1, -1, channels]
            outputs.append((OUTPUT_IMAGE, datatype, dims))
        outputs.append((RESULT, BYTES, [1]))
        return outputs
