"""``tms run``, ``tms run-i2i`` and ``tms text``: run a model on images or a text."""

from __future__ import annotations

import re
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

from PIL import Image

from tms_cli.connection import Options, check_model, connect, describe_error
from tms_cli.errors import CliError, UsageError
from tms_cli.image_files import save_image, save_preview
from tms_cli.inputs import IMAGE_EXTENSIONS, STDIN, ImageSource, collect
from tms_cli.outputs import open_output, print_json, readable_json, to_json
from tms_cli.progress import progress_bar
from tms_cli.video import is_video, run_videos
from tms_client import (
    ConnectError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    PermissionDeniedError,
    TMSError,
    UnauthenticatedError,
    UnavailableError,
    UnsupportedCallError,
)

__all__ = ["run_images", "run_images_to_images", "run_text"]

T = TypeVar("T")

# Errors that would fail every image alike: they end the run instead of being reported
# once per image. UNAVAILABLE is one: the client has already tried the other workers.
_FATAL = (
    ConnectError,
    ModelNotFoundError,
    ModelNotReadyError,
    UnsupportedCallError,
    UnauthenticatedError,
    PermissionDeniedError,
    UnavailableError,
)
# Errors that concern one image: reported as "path: reason", and the run goes on.
_PER_IMAGE = (TMSError, ValueError, OSError, Image.DecompressionBombError)


def run_images(options: Options, args: SimpleNamespace) -> int:
    """``tms run``: one result per image, as JSON (one image) or JSON Lines (several, or
    any number with ``--json``); for video files, one JSON line per frame (tms_cli.video)."""
    videos = [path for path in args.paths if is_video(path)]
    if videos:
        if len(videos) < len(args.paths):
            raise UsageError("give either videos or images to run on, not both")
        return run_videos(options, args, videos)
    sources, missing = _sources(args.paths)
    single = len(args.paths) == 1 and not sources[0].in_folder and not options.json
    with ExitStack() as stack:
        out = sys.stdout if args.out is None else stack.enter_context(open_output(args.out))
        client = stack.enter_context(connect(options, args.model))
        check_model(client, "run_image")

        def work(source: ImageSource) -> Any:
            return client.run_image(source.load(), args.args)

        def write(source: ImageSource, result: Any) -> None:
            if single:
                print_json(readable_json(result), out)
            else:
                out.write(to_json({"path": source.label, "result": result}) + "\n")
            out.flush()

        # Results scrolling on the terminal already show progress; a progress line would
        # only be torn by them.
        quiet = out.isatty()
        failed = _run_all(sources, work, write, args.concurrency, quiet=quiet)
    return _summary(failed + missing, len(sources) + missing)


def run_images_to_images(options: Options, args: SimpleNamespace) -> int:
    """``tms run-i2i``: the output images of each input, written under ``--out-dir``, or
    next to the input as NAME.MODEL.png (stdin's in the current folder)."""
    sources, missing = _sources(args.paths)
    out_dir: Path | None = args.out_dir
    if out_dir is None:
        # Outputs go next to their inputs: in a folder run again, those of this model are
        # no inputs (a file named on the command line is run whatever its name).
        output = re.compile(rf".*\.{re.escape(args.model)}(-\d+)?(\.preview)?")
        sources = [s for s in sources if not (s.in_folder and output.fullmatch(s.name.name))]
        if not sources:
            raise CliError(f"no images to run on but outputs of {args.model}; give --out-dir")
    if args.together and missing:
        raise CliError("--together needs every image; nothing was run")
    if out_dir is not None:
        _make_folder(out_dir)
    together: list[ImageSource] = sources if args.together else []
    sent = " + ".join(s.label for s in together)  # how lines name the one call of --together
    refused: list[ImageSource] = []  # inputs the model refused (INVALID_INPUT)
    inputs = {s.path.resolve() for s in sources if s.path is not None}

    def stem_of(source: ImageSource) -> Path:
        """Where the outputs of ``source`` go, before their suffixes."""
        if out_dir is not None:
            return out_dir / source.name
        here = source.path.parent if source.path is not None else Path()
        return here / f"{source.name.name}.{args.model}"

    with connect(options, args.model) as client:
        check_model(client, "run_image_to_image")

        def work(source: ImageSource) -> dict[str, Any]:
            images = [s.load() for s in together] if together else source.load()
            # RGBA holds every colour order without loss; save_image drops what is not needed.
            try:
                output = client.run_image_to_image(images, args.args, output_color="rgba")
            except InvalidInputError as exc:
                if exc.reason == "INVALID_INPUT":
                    refused.append(source)
                raise
            stem = stem_of(source)
            several = len(output.images) > 1
            written = []
            for i, image in enumerate(output.images):
                name = stem.with_name(f"{stem.name}-{i}") if several else stem
                _keep_inputs(name, inputs)
                written.append(save_image(image, name))
                if args.preview:
                    written += save_preview(image, name)
            return {"outputs": [str(path) for path in written], "result": output.result}

        def write(source: ImageSource, done: dict[str, Any]) -> None:
            if options.json:
                sys.stdout.write(to_json({"path": source.label, **done}) + "\n")
            else:
                result = "" if done["result"] is None else f"  {to_json(done['result'])}"
                outputs = ", ".join(done["outputs"])
                sys.stdout.write(f"{sent or source.label} -> {outputs}{result}\n")
            sys.stdout.flush()

        # With --together there is one call, its outputs named after the first image.
        jobs = sources[:1] if together else sources
        failed = _run_all(
            jobs,
            work,
            write,
            args.concurrency,
            quiet=sys.stdout.isatty(),
            label=lambda source: sent or source.label,
        )
    total = (1 if together else len(sources)) + missing
    return _summary(failed + missing, total, "" if together else _sent_alone(sources, refused))


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create {folder}: {describe_error(exc)}") from exc


def _sent_alone(sources: list[ImageSource], refused: list[ImageSource]) -> str:
    """What the summary adds when the model refused every one of several images, each sent in
    a call of its own: it may take them together (optical flow's two frames)."""
    if len(sources) > 1 and len(refused) == len(sources):
        return ", each sent in a call of its own; --together sends them all in one call"
    return ""


def _keep_inputs(stem: Path, inputs: set[Path]) -> None:
    """ValueError (this image fails) when an output named ``stem`` would overwrite an input."""
    for suffix in (".png", ".npy", ".preview.png"):
        path = stem.with_name(stem.name + suffix)
        if path.resolve() in inputs:
            raise ValueError(
                f"its output would overwrite the input {path}; give --out-dir a folder that "
                "holds no input"
            )


def run_text(options: Options, args: SimpleNamespace) -> int:
    """``tms text``: the model's result for one text, as JSON."""
    text = _stdin_text() if args.text == STDIN else args.text
    # The shell passes bytes that are not UTF-8 as surrogates (PEP 383): take them back.
    text = _utf8(text.encode("utf-8", "surrogateescape"), "the text")
    with connect(options, args.model) as client:
        check_model(client, "run_text")
        result = client.run_text(text, args.args)
    print_json(to_json(result) if options.json else readable_json(result), sys.stdout)
    return 0


def _stdin_text() -> str:
    """stdin as UTF-8 text, its newlines as the platform reads text (CRLF to LF on Windows)."""
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(encoding="utf-8", errors="strict")
    try:
        return sys.stdin.read()
    except UnicodeDecodeError as exc:
        raise _not_utf8("stdin", exc) from None


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(what, exc) from None


def _not_utf8(what: str, exc: UnicodeDecodeError) -> UsageError:
    bad = exc.object[exc.start : exc.start + 1]
    return UsageError(
        f"{what} is not UTF-8 (byte {exc.start}: {bad!r}); a model's text is UTF-8: convert "
        "it first, e.g. with iconv"
    )


def _sources(paths: list[str]) -> tuple[list[ImageSource], int]:
    """The images named by ``paths``, and how many paths named nothing (reported here)."""
    inputs = collect(paths, sys.stdin.buffer.read)
    problems = [f"{path}: {reason}" for path, reason in inputs.missing]
    problems += [
        f"{folder}: no images ({' '.join(IMAGE_EXTENSIONS)}) in this folder"
        for folder in inputs.empty_folders
    ]
    if not inputs.sources and len(problems) == 1:
        raise CliError(problems[0])
    for problem in problems:
        _report(problem)
    if not inputs.sources:
        raise CliError("no images to run on")
    return inputs.sources, len(inputs.missing)


def _run_all(
    sources: list[ImageSource],
    work: Callable[[ImageSource], T],
    write: Callable[[ImageSource, T], None],
    concurrency: int,
    *,
    quiet: bool,
    label: Callable[[ImageSource], str] = lambda source: source.label,
) -> int:
    """Run ``work`` on every source, ``concurrency`` at a time, and ``write`` the results
    in input order; returns how many failed, each reported on stderr as "path: reason" (the
    path as ``label`` names the source).
    A progress line shows on stderr when it is a terminal, unless ``quiet``.

    Only a few calls are queued ahead of the one written next, so a folder of a million
    images costs no more memory than one of ten.
    """
    progress = progress_bar(sys.stderr, len(sources), allowed=not quiet)
    progress.start()
    failed = 0
    pending: deque[tuple[ImageSource, Future[T]]] = deque()
    queued = iter(sources)
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="tms-run")
    try:
        while True:
            while len(pending) < 2 * concurrency and (source := next(queued, None)):
                pending.append((source, pool.submit(work, source)))
            if not pending:
                break
            source, future = pending.popleft()
            try:
                result = future.result()
            except _FATAL:
                raise
            except _PER_IMAGE as exc:
                failed += 1
                progress.console.print(f"{label(source)}: {_reason(exc, source)}")
            else:
                write(source, result)
            progress.advance(progress.task_ids[0])
    finally:
        # On an error or Ctrl-C, drop what is queued; closing the client ends running calls.
        pool.shutdown(wait=False, cancel_futures=True)
        progress.stop()
    return failed


def _reason(exc: BaseException, source: ImageSource) -> str:
    reason = describe_error(exc)
    if source.path is not None:  # the line starts with the path: do not say it twice
        reason = reason.replace(f" {source.label} ", " ")
    filename = getattr(exc, "filename", None)
    if filename is not None and str(filename) != source.label:  # an output file, say
        reason = f"{reason}: {filename}"
    return reason


def _report(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _summary(failed: int, total: int, hint: str = "") -> int:
    if failed and total > 1:
        _report(f"tms: {failed} of {total} images failed{hint}")
    return 1 if failed else 0
