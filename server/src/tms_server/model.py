"""The plugin contract: what a TMS model is.

A model is a class named ``Model`` in a package of the models folder (``models/face/__init__.py``)
or a class registered in the ``tms.models`` entry-point group. The server makes one instance
per worker process, in that process, when the worker starts; ``__init__`` is the place to load
weights. Subclassing :class:`Model` is recommended but not required: the server reads the same
attributes with the same defaults from any class.

Inputs: an image model receives a numpy array of shape (H, W) or (H, W, C), read-only, in the
colour order named by ``color`` and the dtype named by ``dtype``; a text model receives ``str``.
``args`` is the request's JSON object as a dict. Results must be JSON-serializable (numpy
scalars and arrays are converted). Raise :class:`InvalidInput` for input the model rejects;
any other exception becomes INTERNAL for that call, with the traceback logged.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy.typing as npt

__all__ = ["Image", "InvalidInput", "Model"]

Image = npt.NDArray[Any]


class InvalidInput(ValueError):  # noqa: N818 - named for what the caller did wrong
    """Raised by a model for input it rejects; the caller gets INVALID_ARGUMENT."""


class Model:
    """Base class of TMS models; override ``run`` and/or ``run_image_to_image``."""

    #: What the model takes: ``"image"`` (numpy arrays) or ``"text"`` (str).
    inputs: ClassVar[Literal["image", "text"]] = "image"
    #: Colour order ``run`` receives: ``"rgb"``, ``"bgr"``, ``"gray"``, ``"rgba"``, ``"bgra"``,
    #: or None to receive images as the client sent them. The server converts.
    color: ClassVar[str | None] = None
    #: dtype ``run`` receives, e.g. ``"uint8"`` or ``"float32"``; None for any. Images of
    #: another dtype are cast when the cast is safe (values kept) and rejected otherwise.
    dtype: ClassVar[str | None] = None
    #: Colour order of the images ``run_image_to_image`` returns, named as for ``color``;
    #: None when they are not colour images (flow fields, masks of labels).
    output_color: ClassVar[str | None] = None
    #: Expected input shape, (H, W) or (H, W, C), with -1 for any size; None for any shape.
    input_shape: ClassVar[tuple[int, ...] | None] = None
    #: True if one instance may run several calls at once; otherwise the worker runs its
    #: calls to this model one at a time.
    thread_safe: ClassVar[bool] = False

    def run(self, data: Any, args: dict[str, Any]) -> Any:
        """Run on one input; called by the server for RunImage / RunText.

        ``data`` is an image array or a str (see ``inputs``); returns a JSON-serializable result.
        """
        raise NotImplementedError

    def run_batch(self, data: list[Any], args: dict[str, Any]) -> list[Any]:
        """Run on several inputs; called for RunImageBatch / RunTextBatch.

        Returns one result per input, in order. The default calls ``run`` for each; override it
        when the model is faster on a batch.
        """
        return [self.run(item, args) for item in data]

    def run_image_to_image(
        self, images: list[Image], args: dict[str, Any]
    ) -> Image | list[Image] | tuple[Image | list[Image], Any]:
        """Turn images into images; called for RunImageToImage.

        Returns one array, a list of arrays, or a pair (array(s), JSON-serializable result).
        """
        raise NotImplementedError

    def get_input_shape(self) -> tuple[int, ...] | None:
        """The input shape reported by GetModelInfo; defaults to ``input_shape``."""
        return self.input_shape
