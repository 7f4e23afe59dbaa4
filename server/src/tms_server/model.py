"""The plugin contract: what a TMS model is.

A model is a class named ``Model`` in a package of the models folder (``models/face/__init__.py``)
or a class registered in the ``tms.models`` entry-point group. The server makes one instance
per worker process, in that process, when the worker starts; ``__init__`` is the place to load
weights. Subclassing :class:`Model` is recommended but not required: the server reads the same
attributes with the same defaults from any class.

Where it runs: the server sets ``worker_index``, ``device`` and ``threads`` on the instance
before ``__init__`` runs, and passes them to ``__init__`` as keyword arguments too when it
names such parameters (``def __init__(self, device="cpu")``). A model that should not load in
every worker declares ``workers`` and/or ``devices``: every worker still imports its module
(to read them), but only the workers it is placed on call ``__init__``; the others send its
calls there (tms_server.devices says how workers are picked).

Inputs: an image model receives a numpy array of shape (H, W) or (H, W, C), read-only, in the
colour order named by ``color`` and the dtype named by ``dtype``; a text model receives ``str``.
``args`` is the request's JSON object as a dict. Results must be JSON-serializable (numpy
scalars and arrays are converted). Raise :class:`InvalidInput` for input the model rejects;
any other exception becomes INTERNAL for that call, with the traceback logged.

Streams: an image model serves RunImageStream (a video, frame by frame) with ``run``; one
that keeps state across a stream's frames (a tracker) returns an object of its own from
``open_stream``, whose ``run`` takes the frames and whose ``close`` ends it.
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
    #: How many workers load the model (the lowest indices among those on ``devices``, which
    #: spreads them over the devices); None: every one.
    workers: ClassVar[int | None] = None
    #: The devices whose workers may load it, one name or a tuple of them, as the server's
    #: ``--devices`` names them (``("cuda:1",)``; ``"cuda"`` for any GPU, ``"cpu"``); None:
    #: any device.
    devices: ClassVar[str | tuple[str, ...] | None] = None
    #: The model's version, reported in ModelInfo and in every Run response
    #: (``model_version``), e.g. ``"1.2"``; None: a hash of the model's files (its folder, or
    #: an entry point's module file), which changes when a reload finds them edited.
    version: ClassVar[str | None] = None
    #: The most inputs one batch call may carry for this model; the server's
    #: ``--max-batch-size`` when None or larger.
    max_batch_size: ClassVar[int | None] = None
    #: Dynamic batching, in seconds: how long a RunImage call may wait in its worker for other
    #: calls to this model to run with it as one ``run_batch`` call (of at most
    #: ``max_batch_size`` images, all with the same args); each caller still gets its own
    #: result or error. 0 batches only calls that came while the model was busy; at most 1.
    #: None: each RunImage call runs alone, through ``run``. The server's
    #: ``--model-max-batch-delay-ms`` overrides it; GetModelInfo reports it.
    max_batch_delay: ClassVar[float | None] = None
    #: JSON Schema (Draft 2020-12) of ``args``, as a dict: the server checks every call's args
    #: against it (INVALID_ARGUMENT, one field violation per problem) and GetModelInfo reports
    #: it; a schema that is not valid makes the model fail to load. None: any JSON object.
    args_schema: ClassVar[dict[str, Any] | None] = None
    #: JSON Schema (Draft 2020-12) of the results, as a dict: reported by GetModelInfo for
    #: callers (checked for validity at load, never against a result). None: undeclared.
    result_schema: ClassVar[dict[str, Any] | None] = None

    #: Set by the server on each instance before ``__init__``: the index of the worker process
    #: it runs in (0 to workers - 1).
    worker_index: int = 0
    #: Set by the server: the device to run on as this process sees it, ``"cuda:0"`` (the
    #: worker's one GPU: the server sets CUDA_VISIBLE_DEVICES) or ``"cpu"``.
    device: str = "cpu"
    #: Set by the server: the threads the model's numerical work should use in this worker
    #: (OMP_NUM_THREADS and the like are set to it); pass it to libraries that read no
    #: variable, e.g. ONNX Runtime's ``intra_op_num_threads`` or ``torch.set_num_threads``.
    threads: int = 1

    def run(self, data: Any, args: dict[str, Any]) -> Any:
        """Run on one input; called by the server for RunImage / RunText.

        ``data`` is an image array or a str (see ``inputs``); returns a JSON-serializable result.
        The default, for a model that overrides only ``run_batch``, runs a batch of one.
        """
        if type(self).run_batch is Model.run_batch:
            raise NotImplementedError
        results = self.run_batch([data], args)
        if len(results) != 1:
            raise ValueError(f"run_batch returned {len(results)} results for 1 input")
        return results[0]

    def run_batch(self, data: list[Any], args: dict[str, Any]) -> list[Any]:
        """Run on several inputs; called for RunImageBatch / RunTextBatch, and for the
        RunImage calls a worker gathers when the model sets ``max_batch_delay``.

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

    def open_stream(self, args: dict[str, Any]) -> Any:
        """Begin a stream of frames (RunImageStream); called by the server when a stream
        opens, with the stream's args (those of its first message), in the worker the whole
        stream stays on.

        Returns what runs the stream's frames: None (this default) to call ``run`` for each,
        or an object of the stream's own that keeps state from frame to frame (a tracker):
        its ``run(image, args)`` is called for each frame, one at a time and in order, and
        its ``close()``, if it has one, once when the stream ends, however it ends (the
        caller finished or left, a stream error, the worker stopping). Streams are
        independent: each gets its own object, and calls of different streams may come in
        any interleaving (one at a time unless ``thread_safe``). ``open_stream``, the frames
        and ``close`` run on the worker's threads; raise InvalidInput to refuse the stream.
        """
        return None

    def get_input_shape(self) -> tuple[int, ...] | None:
        """The input shape reported by GetModelInfo; defaults to ``input_shape``."""
        return self.input_shape
