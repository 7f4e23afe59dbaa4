"""The images a command runs on: files, folders searched recursively, or ``-`` for stdin."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePath
from typing import Any

from PIL import Image, UnidentifiedImageError

from tms_cli.errors import UsageError
from tms_cli.values import IMAGE_EXTENSIONS
from tms_client import ImageError

__all__ = ["IMAGE_EXTENSIONS", "STDIN", "ImageSource", "Inputs", "collect"]

STDIN = "-"
# Sent as they are; the server decodes them. Other formats are decoded here by Pillow.
_SENT_ENCODED = ("PNG", "JPEG")


@dataclass(frozen=True)
class ImageSource:
    """One image to send: a file, or the bytes read from stdin."""

    label: str  # how results and errors name it: the path as given or found, or "-"
    name: PurePath  # where its outputs go under an output folder, without a suffix
    path: Path | None = None
    data: bytes | None = None
    in_folder: bool = False  # found by searching a folder, not named on the command line

    def load(self) -> Any:
        """What ``ModelClient`` takes: the file's path, or stdin's bytes (PNG or JPEG) or
        image (any other format Pillow reads)."""
        if self.path is not None:
            return self.path
        data = self.data or b""
        if not data:
            raise ImageError("no data on stdin")
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError("stdin holds no image Pillow can read") from None
        if image.format in _SENT_ENCODED:
            return data
        image.load()
        return image


@dataclass(frozen=True)
class Inputs:
    """The images found, and the command-line paths that yielded none (path, reason)."""

    sources: list[ImageSource]
    missing: list[tuple[str, str]]
    empty_folders: list[str]


def collect(paths: Sequence[str], read_stdin: Callable[[], bytes]) -> Inputs:
    """The images named by ``paths``, in order; folders are searched recursively for files
    with an image extension, skipping hidden ones. ``read_stdin()`` gives stdin's bytes."""
    if sum(path == STDIN for path in paths) > 1:
        raise UsageError("'-' (stdin) may be given only once")
    sources: list[ImageSource] = []
    missing: list[tuple[str, str]] = []
    empty: list[str] = []
    for text in paths:
        if text == STDIN:
            sources.append(ImageSource(STDIN, PurePath("stdin"), data=read_stdin()))
            continue
        path = Path(text)
        if path.is_dir():
            found = _images_in(path)
            if not found:
                empty.append(text)
            sources += [
                ImageSource(str(path / rel), rel.with_suffix(""), path=path / rel, in_folder=True)
                for rel in found
            ]
        elif path.exists():
            sources.append(ImageSource(text, PurePath(path.stem), path=path))
        else:
            missing.append((text, "no such file or folder"))
    return Inputs(_unique_names(sources), missing, empty)


def _images_in(folder: Path) -> list[PurePath]:
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        # Hidden files include macOS's "._photo.jpg" resource forks, which are no images.
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append(PurePath(rel))
    return sorted(found)


def _unique_names(sources: list[ImageSource]) -> list[ImageSource]:
    """``sources`` with output names made unique (a.png and a.jpg both want "a")."""
    used: set[str] = set()
    unique = []
    for source in sources:
        name, number = source.name, 1
        while name.as_posix().lower() in used:
            number += 1
            name = source.name.with_name(f"{source.name.name}-{number}")
        used.add(name.as_posix().lower())
        unique.append(source if name == source.name else replace(source, name=name))
    return unique
